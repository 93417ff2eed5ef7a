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
Each split is converted once into an ``ImageStore`` (uint8 [N, 3, S, S], classes sorted by name) under
``<root>/.metarun-cache/`` and memory-mapped from there on later runs.
"""

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metarun.data.store import ImageStore
from metarun.errors import RunError

SPLITS = ("train", "val", "test")
CACHE_DIR = ".metarun-cache"
# the learn2learn tarball names the validation split "validation", some re-packs "val"
PICKLE_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
# what a damaged file raises while it is parsed; each means the same fix: replace the file
READ_ERRORS = (OSError, EOFError, ValueError, LookupError, TypeError, AttributeError, ImportError, pickle.UnpicklingError)


def load_split(root: Path, split: str, image_size: int = 84) -> ImageStore:
    """The ``split`` ("train", "val" or "test") of miniImageNet in ``root``, converted once and memory-mapped."""
    if split not in SPLITS:
        raise ValueError(f"miniImageNet has no split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(root)
    cache = root / CACHE_DIR / f"miniimagenet-{split}-{image_size}px.pt"
    if not cache.exists():
        store = convert(root, split, image_size)
        try:
            store.save(cache)
        except OSError as err:
            raise RunError(f"cannot write the dataset cache {cache} ({err.strerror}); make {root} writable "
                           "or copy the miniImageNet files to a writable dataset.root") from err
    return ImageStore.load(cache)


def convert(root: Path, split: str, image_size: int) -> ImageStore:
    """Read ``split`` from the first format present in ``root`` into an in-memory ``ImageStore``."""
    for find, read in FORMATS.values():
        files = find(root, split)
        if files is not None:
            try:
                return read(files, image_size)
            except RunError:
                raise
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
    return _assemble({wnid: [images[i] for i in rows] for wnid, rows in data["class_dict"].items()}, image_size)


def _read_hdf5(files: tuple, image_size: int) -> ImageStore:
    data_path, labels_path = files
    try:
        import h5py  # optional: only torchmeta's cache needs it
    except ImportError as err:
        raise RunError(f"reading {data_path} needs h5py: pip install h5py (or use another miniImageNet format)") from err
    labels = json.loads(labels_path.read_text())
    with h5py.File(data_path, "r") as f:
        group = f["datasets"]
        return _assemble({wnid: group[wnid] for wnid in labels}, image_size)


def _read_csv(files: tuple, image_size: int) -> ImageStore:
    folder, table = files
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise RunError(f"{table} must start with a filename,label header, got {reader.fieldnames}; fix its first line")
        classes = {}
        for row in reader:
            classes.setdefault(row["label"], []).append(folder / row["filename"])
    return _assemble(classes, image_size, decode=_decode_image)


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read image {path} ({err.__class__.__name__}: {err}); replace the file or remove "
                       "its row from the split's .csv, then rerun") from err


def _assemble(classes: dict, image_size: int, decode=np.asarray) -> ImageStore:
    """One ``ImageStore`` from {class name: sequence of images}, classes sorted by name, images in order."""
    names = sorted(classes)
    counts = torch.tensor([len(classes[name]) for name in names], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    images = torch.empty((int(offsets[-1]), 3, image_size, image_size), dtype=torch.uint8)
    rows = ((name, item) for name in names for item in classes[name])
    pixels = images.numpy()  # shares memory with images; numpy takes read-only source arrays without a copy
    for row, (name, item) in enumerate(rows):
        image = decode(item)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"class {name}: expected uint8 RGB images (H, W, 3), got {image.dtype} {image.shape}")
        pixels[row] = _resized(image, image_size).transpose(2, 0, 1)
    return ImageStore(images, offsets, tuple(names))


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    # Lanczos is antialiased, so downscaled ImageNet photos keep no aliasing artefacts
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


FORMATS = {"pickle": (_find_pickle, _read_pickle), "hdf5": (_find_hdf5, _read_hdf5), "csv": (_find_csv, _read_csv)}
