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
as ``<dataset.cache_dir>/miniimagenet-<split>-<size>px-<fingerprint of its files>.store`` (``dataset.cache_dir``
is ``paths.cache_dir``) and memory-mapped from there on later runs; replacing a file builds a new cache.
Pickles are read with the restricted unpickler of ``metarun.data.files.safe_pickle``: a file that asks it for anything
but numpy arrays is refused, never run.
"""

import csv
import json
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metarun.config.datasets import MiniImageNetConfig
from metarun.data import Dataset
from metarun.data.files import safe_pickle
from metarun.data.files.imagefiles import decode_classes, require_h5py
from metarun.data.files.store import ImageStore, cached_store, fingerprint
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.utils.errors import RunError

SPLITS = ("train", "val", "test")
# the learn2learn tarball names the validation split "validation", some re-packs "val"
PICKLE_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
# where a good pickle comes from, said when a file asks the unpickler for code (there is no official download)
PICKLE_FIX = "replace it with the file of the learn2learn or torchmeta miniImageNet tarball, or use another format"
# per-channel statistics of the meta-train images, as used by MetaOptNet (Lee et al., 2019) and later work
NORMALISATION = ((120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
                 (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255))
# what a damaged file raises while it is parsed; each means the same fix: replace the file
READ_ERRORS = (OSError, EOFError, ValueError, LookupError, TypeError, AttributeError, ImportError, pickle.UnpicklingError)


def build(settings, device: torch.device) -> ImageTasks:
    """The miniImageNet task source of a ``MiniImageNetConfig``: N-way K-shot episodes from its three splits."""
    stores = {split: load_split(settings.root, split, settings.image_size, settings.cache_dir) for split in SPLITS}
    return ImageTasks.from_config(settings, stores, device, NORMALISATION)


def load_split(root: Path, split: str, image_size: int = 84, cache_dir=None) -> ImageStore:
    """One split ("train", "val" or "test") of the miniImageNet in ``root``, converted once into ``cache_dir``
    under a fingerprint of its source files (a replaced file gets a new cache)."""
    if split not in SPLITS:
        raise ValueError(f"miniImageNet has no split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(root)
    read, files = find_files(root, split)
    cache = Path(cache_dir or root / ".metarun-cache") / f"miniimagenet-{split}-{image_size}px-{fingerprint(*files)}.store"
    return cached_store(cache, lambda: convert(read, files, split, image_size))


def first_format(formats: dict, root: Path, split: str):
    """(handler, files) of the first of ``formats`` ({name: (find, handler)}) whose ``find(root, split)`` finds
    files, or None."""
    for find, handler in formats.values():
        files = find(root, split)
        if files is not None:
            return handler, files
    return None


def find_files(root: Path, split: str) -> tuple:
    """(reader, files) of the first format present in ``root`` for ``split``."""
    found = first_format(FORMATS, root, split)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"no miniImageNet {split} split in {root}; put one of these there (or set dataset.root): "
        "mini-imagenet-cache-{train,validation,test}.pkl (learn2learn/torchmeta tarball) | "
        "{train,val,test}_data.hdf5 + {train,val,test}_labels.json (torchmeta) | "
        "images/ + {train,val,test}.csv with a filename,label header (Ravi & Larochelle); it has no official "
        "download address (ImageNet's terms of access), so dataset.download cannot fetch it"
    )


def convert(read, files: tuple, split: str, image_size: int) -> ImageStore:
    """``read(files, image_size)`` as an in-memory ``ImageStore``; a damaged file is one error naming it."""
    with damaged("miniImageNet", split, files):
        return read(files, image_size)


@contextmanager
def damaged(dataset: str, split: str, files: tuple):
    """Turn a damaged source file's parse error (``READ_ERRORS``) into one RunError naming the files and the fix."""
    try:
        yield
    except READ_ERRORS as err:
        names = " + ".join(str(f) for f in files)
        raise RunError(f"cannot read {dataset} {split} from {names} ({err.__class__.__name__}: {err}); "
                       "the file is corrupt, truncated or not in the expected format: replace it and rerun") from err


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
    data = safe_pickle.load(path, "a miniImageNet pickle", PICKLE_FIX, encoding="ASCII")
    images = data["image_data"]
    return decode_classes({wnid: [images[i] for i in rows] for wnid, rows in data["class_dict"].items()}, image_size, _array_image,
                          "miniImageNet")


def _read_hdf5(files: tuple, image_size: int) -> ImageStore:
    data_path, labels_path = files
    h5py = require_h5py(data_path, "another miniImageNet format")
    labels = json.loads(labels_path.read_text())
    with h5py.File(data_path, "r") as f:
        group = f["datasets"]
        return decode_classes({wnid: group[wnid] for wnid in labels}, image_size, _array_image, "miniImageNet")


def _read_csv(files: tuple, image_size: int) -> ImageStore:
    folder, table = files
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise RunError(f"{table} must start with a filename,label header, got {reader.fieldnames}; fix its first line")
        classes = {}
        for row in reader:
            classes.setdefault(row["label"], []).append(folder / row["filename"])
    return decode_classes(classes, image_size, _file_image, "miniImageNet")


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


FORMATS = {"pickle": (_find_pickle, _read_pickle), "hdf5": (_find_hdf5, _read_hdf5), "csv": (_find_csv, _read_csv)}


DATASET = Dataset(build, MiniImageNetConfig)
