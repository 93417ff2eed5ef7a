"""Your own images (``dataset=imagefolder``): meta-train, validation and meta-test splits, each a
``<folder or zip>/<class...>/<image>.{png,jpg,jpeg}`` tree or a list of them, as N-way K-shot episodes.

Protocol: the classes of each split are the image folders of its trees (a class present in two trees of one
split is two classes); images are resized to ``image_size`` squares with antialiasing, read as ``channels``
(1 grey or 3 RGB), scaled to [0, 1] and normalised by ``mean``/``std``. Each tree is decoded once into an
ImageStore cached as ``<dataset.cache_dir>/imagefolder-<name>-<size>px-<channels>ch-<fingerprint>.store``.
"""

from pathlib import Path

import torch

from metarun.config.datasets import ImageFolderConfig
from metarun.data import Dataset
from metarun.data.files.imagefiles import PIL_MODES, read_images
from metarun.data.files.store import ImageStore, cached_store, fingerprint
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.utils.disk import exists


def build(settings, device: torch.device) -> ImageTasks:
    """The task source of an ``ImageFolderConfig``."""
    if settings.channels not in PIL_MODES:
        raise ValueError(f"dataset.channels={settings.channels} is not supported; use 1 (grey) or 3 (RGB)")
    if len(settings.mean) not in (1, settings.channels) or len(settings.std) != len(settings.mean):
        raise ValueError(f"dataset.mean and dataset.std need 1 or {settings.channels} values each (one per channel), "
                         f"got {len(settings.mean)} and {len(settings.std)}")
    paths = {split: as_list(settings[split]) for split in ("train", "val", "test")}
    for split, listed in paths.items():
        if not listed:
            raise ValueError(f"dataset.{split} lists no images; set it to a folder or zip of class folders, or a list of them")
    stores = {split: ImageStore.cat([load_tree(settings, Path(path)) for path in listed])
              for split, listed in paths.items()}
    return ImageTasks.from_config(settings, stores, device, normalisation=(list(settings.mean), list(settings.std)))


def load_tree(settings, path: Path) -> ImageStore:
    """One folder or zip of class folders, decoded once and cached."""
    if not exists(path, setting="dataset.train/val/test"):
        raise FileNotFoundError(f"{path} does not exist; set dataset.train/val/test to image folders or zips")
    key = f"imagefolder-{path.stem}-{settings.image_size}px-{settings.channels}ch-{fingerprint(path)}.store"
    return cached_store(Path(settings.cache_dir) / key,
                        lambda: read_images(path, settings.image_size, settings.channels))


def as_list(value) -> list:
    """A path or a list of paths, as a list."""
    return [value] if isinstance(value, str) else list(value)


DATASET = Dataset(build, ImageFolderConfig)
