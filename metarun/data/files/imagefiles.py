"""Image trees on disk → ImageStore: any ``<folder or zip>/<class...>/<image>.{png,jpg,jpeg}`` layout.

The class of an image is the path of its folder relative to the tree's root, so nested class folders work
(Omniglot's ``<Alphabet>/<character>``). A zip whose entries all sit under one top-level folder (as the
official Omniglot zips do) is read from inside that folder. Images are resized to a square with
antialiasing (PIL's Lanczos filter) and stored as uint8 [N, C, H, W]; classes and the images within each
class are in sorted order, so the same files always give the same store.
"""

import io
import itertools
import tarfile
import threading
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from PIL import Image

from metarun.data.files.store import ImageStore
from metarun.logging.console import tracked
from metarun.utils.errors import RunError

SUFFIXES = (".png", ".jpg", ".jpeg")
PIL_MODES = {1: "L", 3: "RGB"}  # channels → PIL image mode


def image_to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image as uint8 [channels, size, size], resized with antialiasing."""
    image = image.convert(PIL_MODES[channels]).resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_images(path: Path, size: int, channels: int) -> ImageStore:
    """Decode every image of the folder or zip at ``path`` into a store, one class per image folder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunError: a corrupt zip or image (named), or no images inside class folders.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; put the image folder or zip there or correct the path")
    if path.is_dir():
        names = [n for n in (p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) if is_image(n)]
        return _decode_tree(path, names, lambda name: (path / name).read_bytes(), size, channels)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in inside(path, archive.namelist()) if is_image(n)]
            wrapper = _wrapper_folder(names)
            names = [n[len(wrapper):] for n in names]
            # one entry at a time: from Python 3.12 on, concurrent reads of one ZipFile corrupt each other
            # ("Overlapped entries", "invalid stored block lengths"); decoding, the slow part, stays parallel
            lock = threading.Lock()

            def read(name: str) -> bytes:
                with lock:
                    return archive.read(wrapper + name)

            return _decode_tree(path, names, read, size, channels)
    except zipfile.BadZipFile as err:
        raise RunError(f"{path} is not a readable zip ({err}); download it again or give its extracted folder") from err


def is_image(name: str) -> bool:
    """An image file by its suffix, outside hidden folders (macOS zips carry ``__MACOSX/._x.png`` stubs)."""
    parts = PurePosixPath(name).parts
    return PurePosixPath(name).suffix.lower() in SUFFIXES and not any(p.startswith((".", "__MACOSX")) for p in parts)


def inside(archive: Path, names: list) -> list:
    """``names``, the entries of ``archive``; one that points outside it (absolute, or climbing out with ``..``)
    is a RunError naming it: such a zip is crafted, or broken, and its class names would be too."""
    for name in names:
        path = PureWindowsPath(name)  # reads both / and \ as separators, and sees drive letters
        if path.anchor or ".." in path.parts:
            raise RunError(f"{archive} holds the entry {name}, which points outside the archive; metarun refuses it: "
                           "use the official archive, or a zip whose entries are relative paths inside it")
    return names


def _wrapper_folder(names: list) -> str:
    """The one top-level folder (with a trailing slash) that holds every entry, or "" when there is none."""
    tops = {n.split("/", 1)[0] for n in names}
    return f"{tops.pop()}/" if len(tops) == 1 and all(n.count("/") >= 2 for n in names) else ""


def _decode_tree(root: Path, names: list, read, size: int, channels: int) -> ImageStore:
    """Group ``names`` (relative image paths) by folder and decode them with ``read(name) -> bytes``."""
    stray = [n for n in names if "/" not in n]
    if stray or not names:
        found = f"images outside class folders (e.g. {stray[0]})" if stray else "no .png/.jpg/.jpeg images"
        raise RunError(f"{root} has {found}; expected <root>/<class>/<image>.png (class folders may be nested)")
    names = sorted(names, key=lambda n: (n.rsplit("/", 1)[0], n))
    classes = [n.rsplit("/", 1)[0] for n in names]
    sizes = Counter(classes)  # insertion-ordered, so classes stay sorted

    def decode(name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(read(name))) as image:
                return image_to_array(image, size, channels)
        except Exception as err:  # a bad file surfaces as many exception types (zlib, PIL, CRC); the fix is the same
            raise RunError(f"cannot decode {root}/{name} ({err.__class__.__name__}: {err}); replace or remove that file") from err

    # PIL decodes and resizes outside the GIL, so threads use every core
    with ThreadPoolExecutor() as pool:
        images = np.stack(list(tracked(pool.map(decode, names), len(names), f"decoding {root.name}", unit="img")))
    offsets = torch.tensor([0, *sizes.values()]).cumsum(0)
    return ImageStore(torch.from_numpy(images), offsets, tuple(sizes))


def decode_classes(classes: dict, image_size: int, to_image, what: str, channels: int = 3) -> ImageStore:
    """One ``ImageStore`` from {class name: sequence of items}, classes sorted by name, images in order.

    ``to_image(item)`` gives a PIL image (an array, a path, encoded bytes: whatever the format holds); each is
    resized to ``image_size`` with antialiasing, decoded on every core with a progress bar named ``what``.
    """
    names = sorted(classes)
    counts = torch.tensor([len(classes[name]) for name in names], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    images = torch.empty((int(offsets[-1]), channels, image_size, image_size), dtype=torch.uint8)
    decode_into(images, (item for name in names for item in classes[name]), to_image, what)
    return ImageStore(images, offsets, tuple(names))


def decode_into(images: torch.Tensor, items, to_image, what: str, chunk: int = 2048, written=None) -> None:
    """Decode ``items`` (``to_image(item)`` gives a PIL image; one item per row of ``images``, uint8 [N, C, S, S])
    into ``images``, resized with antialiasing, ``chunk`` items at a time on every core, with a progress bar
    named ``what``: memory holds one chunk whatever N (``images`` may be a memory-mapped cache file, and
    ``written(rows)`` its ``write_store`` callback, told after each chunk)."""
    channels, size, pixels = images.shape[1], images.shape[-1], images.numpy()  # pixels shares images' memory

    def convert(item) -> np.ndarray:
        return image_to_array(to_image(item), size, channels)

    # PIL decodes and resizes outside the GIL, so threads use every core; a chunk at a time, as Executor.map
    # would otherwise submit (and hold the results of) every item at once
    with ThreadPoolExecutor() as pool:
        decoded = (image for part in chunks(items, chunk) for image in pool.map(convert, part))
        for row, image in enumerate(tracked(decoded, len(pixels), f"decoding {what}", unit="img")):
            pixels[row] = image
            if written is not None and (row + 1) % chunk == 0:
                written(row + 1)


def chunks(items, size: int):
    """Lists of ``size`` consecutive ``items`` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def read_tar(path: Path, keep):
    """Yield (member name, bytes) of each file of the tar.gz at ``path`` whose name ``keep`` accepts, in one pass (a
    gzip stream cannot seek).

    The stream is then read to its end: tarfile ends its listing without an error at a damaged header, and gzip
    checks its CRC only at the end, so only this makes damage anywhere an error rather than missing or wrong data.
    """
    with tarfile.open(path, "r:gz") as archive:
        for member in archive:
            if member.isfile() and keep(member.name):
                yield member.name, archive.extractfile(member).read()
        while archive.fileobj.read(1 << 20):
            pass


def require_h5py(path: Path, otherwise: str):
    """The h5py module, which only torchmeta's files need (an optional dependency); without it, one RunError
    naming ``path``, the install and ``otherwise`` (the formats that do without it)."""
    try:
        import h5py
    except ImportError as err:
        raise RunError(f"reading {path} needs h5py: pip install h5py (or use {otherwise})") from err
    return h5py
