"""miniImageNet (Vinyals et al., 2016, "Matching Networks for One Shot Learning") with the split of
Ravi & Larochelle (2017, "Optimization as a Model for Few-Shot Learning"): 100 ImageNet classes of 600
images each at 84x84 RGB, 64 classes for meta-train, 16 for validation and 20 for meta-test.

``dataset.root`` may hold any of the formats found in the wild; each split takes the first one present:
    pickle  mini-imagenet-cache-{train,validation|val,test}.pkl, dicts with ``image_data`` (N, 84, 84, 3)
            uint8 and ``class_dict`` {wnid: [row indices]} (the learn2learn / torchmeta tarball);
    hdf5    {train,val,test}_data.hdf5 with ``datasets/<wnid>`` uint8 (600, 84, 84, 3), plus
            {train,val,test}_labels.json listing the wnids (torchmeta's cache; needs h5py);
    csv     images/ plus {train,val,test}.csv with a ``filename,label`` header (Ravi & Larochelle's
            files); images of another size are resized with antialiasing.
Each split is converted once into an ``ImageStore`` (uint8 [N, 3, S, S], classes sorted by name) cached
as ``<dataset.cache_dir>/miniimagenet-<split>-<size>px-<hash of root>.pt`` (``dataset.cache_dir`` is
``paths.cache_dir``) and memory-mapped from there on later runs. Pickles are unpickled, which can run
code: they must be the user's own files, never ones from an untrusted source.
"""

import csv
import hashlib
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metarun.config import MiniImageNetConfig
from metarun.data import Dataset
from metarun.data.augment import random_crop_flip
from metarun.data.image_tasks import ImageTasks
from metarun.data.imagefiles import image_to_array
from metarun.data.store import ImageStore, cached_store
from metarun.errors import RunError
from metarun.logging.console import tracked

SPLITS = ("train", "val", "test")
# the learn2learn tarball names the validation split "validation", some re-packs "val"
PICKLE_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
# per-channel statistics of the meta-train images, as used by MetaOptNet (Lee et al., 2019) and later work
NORMALISATION = ((120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
                 (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255))
# what a damaged file raises while it is parsed; each means the same fix: replace the file
READ_ERRORS = (OSError, EOFError, ValueError, LookupError, TypeError, AttributeError, ImportError, pickle.UnpicklingError)


def build(cfg, device: torch.device) -> ImageTasks:
    """The miniImageNet task source of a ``MiniImageNetConfig``: N-way K-shot episodes from its three splits."""
    stores = {split: load_split(cfg.root, split, cfg.image_size, cfg.cache_dir) for split in SPLITS}
    augment = random_crop_flip if cfg.augment else None
    return ImageTasks(stores, cfg.ways, cfg.shots, cfg.queries, device, NORMALISATION, augment)


def load_split(root: Path, split: str, image_size: int = 84, cache_dir=None) -> ImageStore:
    """One split ("train", "val" or "test") of the miniImageNet in ``root``, converted once into ``cache_dir``."""
    if split not in SPLITS:
        raise ValueError(f"miniImageNet has no split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(root)
    # caches of several roots share paths.cache_dir: the name tells them apart
    place = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    cache = Path(cache_dir or root / ".metarun-cache") / f"miniimagenet-{split}-{image_size}px-{place}.pt"
    return cached_store(cache, lambda: convert(root, split, image_size))


def convert(root: Path, split: str, image_size: int) -> ImageStore:
    """Read ``split`` from the first format present in ``root`` into an in-memory ``ImageStore``."""
    for find, read in FORMATS.values():
        files = find(root, split)
        if files is not None:
            try:
                return read(files, image_size)
            except READ_ERRORS as err:
                names = " + ".join(str(f) for f in files)
                raise RunError(f"cannot read miniImageNet {split} from {names} ({err.__class__.__name__}: {err}); "
                               "the file is corrupt, truncated or not in the expected format: replace it and rerun") from err
    raise FileNotFoundError(
        f"no miniImageNet {split} split in {root}; put one of these there (or set dataset.root): "
        "mini-imagenet-cache-{train,validation,test}.pkl (learn2learn/torchmeta tarball) | "
        "{train,val,test}_data.hdf5 + {train,val,test}_labels.json (torchmeta) | "
        "images/ + {train,val,test}.csv with a filename,label header (Ravi & Larochelle)"
    )


def _find_pickle(root: Path, split: str):
    paths = [root / f"mini-imagenet-cache-{name}.pkl" for name in PICKLE_SPLIT_NAMES[split]]
    return next(((path,) for path in paths if path.is_file()), None)


def _find_hdf5(root: Path, split: str):
    files = (root / f"{split}_data.hdf5", root / f"{split}_labels.json")
    return files if all(f.is_file() for f in files) else None


def _find_csv(root: Path, split: str):
    files = (root / "images", root / f"{split}.csv")
    return files if files[0].is_dir() and files[1].is_file() else None


def _read_pickle(files: tuple, image_size: int) -> ImageStore:
    (path,) = files
    with open(path, "rb") as f:
        # unpickling runs code named in the file: these are the user's own dataset files, as with torchmeta
        # and learn2learn; never point dataset.root at a pickle from an untrusted source
        data = pickle.load(f)
    images = data["image_data"]
    return _assemble({wnid: [images[i] for i in rows] for wnid, rows in data["class_dict"].items()}, image_size, _array_image)


def _read_hdf5(files: tuple, image_size: int) -> ImageStore:
    data_path, labels_path = files
    try:
        import h5py  # optional: only torchmeta's cache needs it
    except ImportError as err:
        raise RunError(f"reading {data_path} needs h5py: pip install h5py (or use another miniImageNet format)") from err
    labels = json.loads(labels_path.read_text())
    with h5py.File(data_path, "r") as f:
        group = f["datasets"]
        return _assemble({wnid: group[wnid] for wnid in labels}, image_size, _array_image)


def _read_csv(files: tuple, image_size: int) -> ImageStore:
    folder, table = files
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise RunError(f"{table} must start with a filename,label header, got {reader.fieldnames}; fix its first line")
        classes = {}
        for row in reader:
            classes.setdefault(row["label"], []).append(folder / row["filename"])
    return _assemble(classes, image_size, _file_image)


def _array_image(array) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB images (H, W, 3), got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def _file_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decodes now, so a truncated file fails here, named
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read image {path} ({err.__class__.__name__}: {err}); replace the file or remove "
                       "its row from the split's .csv, then rerun") from err


def _assemble(classes: dict, image_size: int, to_image) -> ImageStore:
    """One ``ImageStore`` from {class name: sequence of items}, classes sorted by name, images in order."""
    names = sorted(classes)
    counts = torch.tensor([len(classes[name]) for name in names], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    images = torch.empty((int(offsets[-1]), 3, image_size, image_size), dtype=torch.uint8)
    pixels = images.numpy()  # shares memory with images

    def convert(item) -> np.ndarray:
        return image_to_array(to_image(item), image_size, 3)

    # PIL decodes and resizes outside the GIL, so threads use every core
    with ThreadPoolExecutor() as pool:
        converted = pool.map(convert, (item for name in names for item in classes[name]))
        for row, image in enumerate(tracked(converted, len(images), "decoding miniImageNet", unit="img")):
            pixels[row] = image
    return ImageStore(images, offsets, tuple(names))


FORMATS = {"pickle": (_find_pickle, _read_pickle), "hdf5": (_find_hdf5, _read_hdf5), "csv": (_find_csv, _read_csv)}


DATASET = Dataset(build, MiniImageNetConfig)
