"""CIFAR-FS (Bertinetto et al., 2019, "Meta-learning with differentiable closed-form solvers") and FC100
(Oreshkin et al., 2018, "TADAM: Task dependent adaptive metric for improved few-shot learning"): few-shot splits
of CIFAR-100 (Krizhevsky, 2009), 100 classes of 600 32x32 RGB images (the 500 training and 100 test images of
each class together, as both papers use them).

Splits: CIFAR-FS draws 64 / 16 / 20 classes at random (Bertinetto et al.'s lists); FC100 splits the 20
superclasses 12 / 4 / 4 (60 / 20 / 20 classes), so that no meta-test class shares a superclass with meta-train.
The lists below are the published ones (as torchmeta ships them).

Files (``dataset.root``, ``data/cifar100`` for both): the official ``cifar-100-python.tar.gz``, read in place, or
its extracted ``cifar-100-python/`` folder (the ``train``, ``test`` and ``meta`` pickles); the archive is
downloaded from its official address with an md5 check when missing and ``dataset.download`` is true. The
pickles are read with the restricted unpickler of ``metarun.data.files.safe_pickle``: a file that asks it for anything
but numpy arrays is refused, never run.

Preprocessing: 32x32 as they are (other ``image_size`` values resized with antialiasing), scaled to [0, 1] and
normalised per channel as MetaOptNet's code does for both datasets (Lee et al., 2019; kjunelee/MetaOptNet,
data/CIFAR_FS.py and data/FC100.py: mean 129.38, 124.11, 112.48 and std 68.21, 65.43, 70.46, over 255). All 100
classes, named ``<superclass>/<class>``, are cached once per image size as
``<dataset.cache_dir>/cifar100-<size>px-<fingerprint of the source>.store``; each dataset selects its classes.
"""

import tarfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metarun.config.datasets import CIFARFSConfig, FC100Config
from metarun.data import Dataset
from metarun.data.files import safe_pickle
from metarun.data.files.download import download
from metarun.data.files.imagefiles import decode_classes, read_tar
from metarun.data.files.store import ImageStore, cached_store, fingerprint
from metarun.data.miniimagenet import READ_ERRORS, SPLITS
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.utils.disk import exists
from metarun.utils.errors import RunError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE, FOLDER = "cifar-100-python.tar.gz", "cifar-100-python"
PICKLES = ("train", "test", "meta")  # the files of the archive's folder
SIDE = 32  # CIFAR's images are 32x32
NORMALISATION = ((129.37731888 / 255, 124.10583864 / 255, 112.47758569 / 255),
                 (68.20947949 / 255, 65.43124043 / 255, 70.45866994 / 255))
# what a damaged archive raises while it is read, beside a damaged pickle's errors; each means: fetch it again
ARCHIVE_ERRORS = READ_ERRORS + (tarfile.TarError, zlib.error)

# CIFAR-100's 20 superclasses and the 5 classes of each (Krizhevsky, 2009; the archive's meta file)
SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
# Bertinetto et al.'s CIFAR-FS classes, as torchmeta publishes them (tristandeleu/pytorch-meta, commit d55d89e,
# torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json: [superclass, class] pairs)
CIFAR_FS_SPLITS = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin", "elephant",
        "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster",
        "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
        "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip", "turtle",
        "willow_tree", "wolf"),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
        "motorcycle", "otter", "sea", "shark", "television", "tractor"),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
        "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm"),
}
# Oreshkin et al.'s FC100 superclasses (TADAM's split), as torchmeta publishes them (the same commit,
# torchmeta/datasets/assets/cifar100/fc100/{train,val,test}.json)
FC100_SPLITS = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles", "trees",
        "vehicles_1", "vehicles_2"),
    "val": (
        "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": (
        "aquatic_mammals", "insects", "medium_mammals", "people"),
}


def build(settings, device: torch.device, split_of) -> ImageTasks:
    """The task source of a ``CIFARFSConfig``/``FC100Config``: ``split_of(class name)`` names each class's split."""
    classes = load_classes(settings)
    stores = {split: classes.where(lambda name, split=split: split_of(name) == split) for split in SPLITS}
    return ImageTasks.from_config(settings, stores, device, NORMALISATION)


def cifar_fs_split(name: str):
    """CIFAR-FS's split of the class ``<superclass>/<class>``."""
    return next((split for split, classes in CIFAR_FS_SPLITS.items() if name.split("/")[1] in classes), None)


def fc100_split(name: str):
    """FC100's split of the class ``<superclass>/<class>``: its superclass's."""
    return next((split for split, superclasses in FC100_SPLITS.items() if name.split("/")[0] in superclasses), None)


def load_classes(settings) -> ImageStore:
    """All 100 classes of the CIFAR-100 under ``settings.root`` (fetched first when missing and allowed), cached."""
    source = find_source(Path(settings.root), settings.download)
    key = f"cifar100-{settings.image_size}px-{fingerprint(source)}.store"
    return cached_store(Path(settings.cache_dir) / key, lambda: read(source, settings.image_size))


def find_source(root: Path, may_download: bool) -> Path:
    """The archive or extracted folder in ``root``, downloaded when neither is there and ``may_download``."""
    for path in (root / ARCHIVE, root / FOLDER):
        if exists(path):
            return path
    if may_download:
        return download(URL, root / ARCHIVE, MD5)
    raise FileNotFoundError(f"CIFAR-100 is not in {root}: expected {ARCHIVE} or its extracted {FOLDER}/ (official "
                            f"address {URL}, md5 {MD5}); put it there, set dataset.root, or set dataset.download=true")


def read(source: Path, image_size: int) -> ImageStore:
    """The 600 images of each class of the archive or folder at ``source``, one error line if it is damaged."""
    try:
        classes = class_images(read_pickles(source))
    except ARCHIVE_ERRORS as err:
        raise RunError(f"cannot read CIFAR-100 from {source} ({err.__class__.__name__}: {err}); it is corrupt, "
                       "truncated or not the official python version: delete it and rerun to download it again "
                       f"(dataset.download=true), or replace it with the official {ARCHIVE} from {URL}") from err
    return decode_classes(classes, image_size, Image.fromarray, "CIFAR-100")


def read_pickles(source: Path) -> dict:
    """The ``train``, ``test`` and ``meta`` dicts of the archive (read in place, in one pass) or of the folder."""
    if source.is_dir():
        return {name: unpickle(source / name) for name in PICKLES}
    wanted = {f"{FOLDER}/{name}": name for name in PICKLES}
    parts = {wanted[member]: unpickle(data, f"{source}:{member}")
             for member, data in read_tar(source, wanted.__contains__)}
    missing = [path for path, name in wanted.items() if name not in parts]
    if missing:
        raise LookupError(f"no {', '.join(missing)} in the archive")
    return parts


def unpickle(source, name: str = "") -> dict:
    """One pickle of the archive (its bytes, named ``name``) or of the folder (its path)."""
    fix = f"delete it and download the official {ARCHIVE} from {URL} again (md5 {MD5})"
    # the official pickles are Python 2's: their strings load as bytes
    return safe_pickle.load(source, "a CIFAR-100 python pickle", fix, encoding="bytes", name=name)


def class_images(parts: dict) -> dict:
    """{``<superclass>/<class>``: its images as uint8 (32, 32, 3) arrays}, training images before test ones."""
    fine = [name.decode() for name in parts["meta"][b"fine_label_names"]]
    coarse = [name.decode() for name in parts["meta"][b"coarse_label_names"]]
    classes = {}
    for part in (parts["train"], parts["test"]):
        pixels = np.asarray(part[b"data"], dtype=np.uint8)
        if pixels.ndim != 2 or pixels.shape[1] != 3 * SIDE * SIDE:
            raise ValueError(f"expected images as rows of {3 * SIDE * SIDE} bytes, got {pixels.shape}")
        images = pixels.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
        for image, f, c in zip(images, part[b"fine_labels"], part[b"coarse_labels"], strict=True):
            classes.setdefault(f"{coarse[c]}/{fine[f]}", []).append(image)
    return classes


CIFAR_FS = Dataset(partial(build, split_of=cifar_fs_split), CIFARFSConfig)
FC100 = Dataset(partial(build, split_of=fc100_split), FC100Config)
