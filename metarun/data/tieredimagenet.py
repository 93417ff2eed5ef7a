"""tieredImageNet (Ren et al., 2018, "Meta-Learning for Semi-Supervised Few-Shot Classification"): 608 ImageNet
classes grouped into 34 high-level categories and split by category, so that meta-test classes are far from the
meta-train ones: 351 classes (20 categories) for meta-train, 97 (6) for validation and 160 (8) for meta-test
(``PUBLISHED``), 779,165 images at 84x84 RGB, normalised with the per-channel statistics MetaOptNet's loader
uses for it (Lee et al., 2019: miniImageNet's).

``dataset.root`` may hold either format; each split takes the first one present:
    hdf5    {train,val,test}_data.hdf5 with ``datasets/<class>`` (one PNG-encoded image per element) plus
            {train,val,test}_labels.json listing the classes: torchmeta's conversion (needs h5py). Read one
            chunk of images at a time: the low-memory format, and the one taken when both are present;
    pickle  {train,val,test}_images_png.pkl (a sequence of PNG-encoded images, uint8 arrays) plus
            {train,val,test}_labels.pkl (``label_specific``: each image's class index into
            ``label_specific_str``): Ren et al.'s files as learn2learn and torchmeta download them, in root
            or in its ``tiered-imagenet/`` subfolder, where their download puts them. Unpickling has no
            streaming form: it holds the split's encoded images in memory (about the .pkl's size, several GB
            for train) plus one chunk of decoded ones.
Pickles are read with the restricted unpickler of ``metarun.data.files.safe_pickle``: a file that asks it for anything
but numpy arrays is refused, never run.

Classes are named by their specific label (``label_specific_str``, the hdf5 dataset names) and sorted. The
category is not kept: the released files' ``label_general`` is unreliable (Ren et al.'s published converter
gives an image whose category was seen before the index of the next new category; torchmeta's conversion maps
the out-of-range index to an empty name), so a within-category protocol would need Ren et al.'s split lists.

Each split is converted once into an ``ImageStore`` cached as
``<dataset.cache_dir>/tieredimagenet-<split>-<size>px-<fingerprint of its files>.store``, decoded
``CHUNK_IMAGES`` at a time on every core straight into the memory-mapped cache file: the train split is 9.5 GB
at 84px, more than many machines' RAM. Where it does not fit on the device either, ``dataset.store_on`` keeps
it on the host (see ``metarun.data.sampling.sampler``).

There is no official download (ImageNet's terms of use; torchmeta and learn2learn fetch an unofficial copy
from Google Drive or Zenodo), so ``dataset.download`` changes nothing here: a missing split is a
FileNotFoundError at once, naming the files of each format and where to put them.
"""

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metarun.config.datasets import TieredImageNetConfig
from metarun.data import Dataset
from metarun.data.files import safe_pickle
from metarun.data.files.imagefiles import decode_into, require_h5py
from metarun.data.files.store import ImageStore, cached_store_by_chunks, fingerprint
from metarun.data.miniimagenet import NORMALISATION, damaged, first_format
from metarun.data.sampling.image_tasks import ImageTasks

SPLITS = ("train", "val", "test")
# Ren et al. (2018), section 4 (and Lee et al., 2019, section 4.2): (classes, categories) of each split
PUBLISHED = {"train": (351, 20), "val": (97, 6), "test": (160, 8)}
# images decoded at a time while a cache is built: memory beyond the sources is one chunk
CHUNK_IMAGES = 2048
# where the pickles may sit under root: root itself, or the folder learn2learn's and torchmeta's downloads extract
PICKLE_FOLDERS = (".", "tiered-imagenet")
# where good pickles come from, said when a file asks the unpickler for code (there is no official download)
PICKLE_FIX = "replace it with Ren et al.'s file as learn2learn or torchmeta download it, or use torchmeta's hdf5"


def build(settings, device: torch.device) -> ImageTasks:
    """The tieredImageNet task source of a ``TieredImageNetConfig``: N-way K-shot episodes from its three splits."""
    stores = {split: load_split(settings.root, split, settings.image_size, settings.cache_dir) for split in SPLITS}
    return ImageTasks.from_config(settings, stores, device, NORMALISATION)


def load_split(root: Path, split: str, image_size: int = 84, cache_dir=None) -> ImageStore:
    """One split ("train", "val" or "test") of the tieredImageNet in ``root``, converted once into ``cache_dir``
    under a fingerprint of its source files (a replaced file gets a new cache)."""
    if split not in SPLITS:
        raise ValueError(f"tieredImageNet has no split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(root)
    index, files = find_files(root, split)
    cache = Path(cache_dir or root / ".metarun-cache") / f"tieredimagenet-{split}-{image_size}px-{fingerprint(*files)}.store"

    def plan() -> tuple:
        with damaged("tieredImageNet", split, files):
            names, counts, items = index(*files)

        def fill(images: torch.Tensor, written) -> None:
            with damaged("tieredImageNet", split, files):  # inside the cache's writer, which reads an OSError as a failed write
                decode_into(images, items(), png_image, f"tieredImageNet {split}", CHUNK_IMAGES, written)

        return names, counts, (3, image_size, image_size), fill

    store = cached_store_by_chunks(cache, plan)
    classes, categories = PUBLISHED[split]
    if store.num_classes != classes:
        print(f"warning: the tieredImageNet {split} split in {root} has {store.num_classes} classes where Ren et al.'s "
              f"has {classes} (in {categories} categories); results will not compare with published ones")
    return store


def find_files(root: Path, split: str) -> tuple:
    """(index, files) of the first format present in ``root`` for ``split``; ``index(*files)`` gives the
    split's (sorted class names, images per class, a function yielding the encoded images class after class)."""
    found = first_format(FORMATS, root, split)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"no tieredImageNet {split} split in {root}; put one of these there (or set dataset.root): "
        "{train,val,test}_data.hdf5 + {train,val,test}_labels.json (torchmeta; pip install h5py) | "
        "{train,val,test}_images_png.pkl + {train,val,test}_labels.pkl, in root or root/tiered-imagenet/ "
        "(Ren et al.'s files, as learn2learn and torchmeta download them); there is no official download "
        "(ImageNet's terms), so dataset.download cannot fetch them"
    )


def png_image(item) -> Image.Image:
    """An encoded image (bytes or a uint8 array, as cv2.imencode made them) decoded now, as RGB."""
    try:
        with Image.open(io.BytesIO(item)) as image:
            return image.convert("RGB")
    except Exception as err:  # a damaged image surfaces as many exception types (PIL, zlib, struct); the fix is one
        raise ValueError(f"an image does not decode ({err.__class__.__name__}: {err})") from err


def _find_hdf5(root: Path, split: str):
    files = (root / f"{split}_data.hdf5", root / f"{split}_labels.json")
    return files if all(f.is_file() for f in files) else None


def _find_pickle(root: Path, split: str):
    for folder in PICKLE_FOLDERS:
        files = (root / folder / f"{split}_images_png.pkl", root / folder / f"{split}_labels.pkl")
        if all(f.is_file() for f in files):
            return files
    return None


def _index_hdf5(data_path: Path, labels_path: Path) -> tuple:
    h5py = require_h5py(data_path, "Ren et al.'s pickles")
    names = sorted(json.loads(labels_path.read_text()))
    with h5py.File(data_path, "r") as f:
        counts = [len(f["datasets"][name]) for name in names]

    def items():
        # class by class and a chunk at a time, so memory holds one chunk whatever the split's size
        with h5py.File(data_path, "r") as f:
            for name in names:
                images = f["datasets"][name]
                for start in range(0, len(images), CHUNK_IMAGES):
                    yield from images[start:start + CHUNK_IMAGES]

    return names, counts, items


def _index_pickle(images_path: Path, labels_path: Path) -> tuple:
    labels = _unpickle(labels_path, "latin1")  # Ren et al.'s are Python 2 pickles: their str keys as str
    specific = np.asarray(labels["label_specific"]).reshape(-1)
    names = [str(name) for name in labels["label_specific_str"]]
    if len(set(names)) != len(names):
        raise ValueError("label_specific_str names a class twice")
    if len(specific) and not 0 <= specific.min() <= specific.max() < len(names):
        raise ValueError(f"label_specific holds class indices outside 0..{len(names) - 1}")
    by_name = sorted(range(len(names)), key=names.__getitem__)  # class indices in the store's order
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names))
    # the source image of each row of the store: classes in name order, images in file order within each
    sources = np.argsort(rank[specific], kind="stable")
    counts = np.bincount(specific, minlength=len(names))[by_name].tolist()

    def items():
        images = _unpickle(images_path, "bytes")  # the encoded images of the whole split (see the docstring)
        if len(images) != len(specific):
            raise ValueError(f"{images_path.name} holds {len(images)} images but {labels_path.name} labels {len(specific)}")
        return (images[i] for i in sources)

    return [names[i] for i in by_name], counts, items


def _unpickle(path: Path, encoding: str):
    return safe_pickle.load(path, "a tieredImageNet pickle", PICKLE_FIX, encoding)


FORMATS = {"hdf5": (_find_hdf5, _index_hdf5), "pickle": (_find_pickle, _index_pickle)}


DATASET = Dataset(build, TieredImageNetConfig)
