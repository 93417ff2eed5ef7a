"""Shared by the dataset-format tests: pristine fixture folders written once per format, copied per test, and
the store the fixture's pixels should give."""

import shutil

import numpy as np
import torch

from metarun.data.store import ImageStore


def pristine_folders(tmp_path_factory, writers: dict, data):
    """``folder(name)``: a folder in format ``name``, written by ``writers[name](path, data)`` on first use."""
    folders = {}

    def folder(name):
        if name not in folders:
            path = tmp_path_factory.mktemp(name)
            writers[name](path, data)  # a writer may skip the asking test (h5py missing)
            folders[name] = path
        return folders[name]

    return folder


def copy_of(sources, name, tmp_path):
    """A fresh copy of the pristine folder ``sources(name)``, for a test to change."""
    return shutil.copytree(sources(name), tmp_path / name)


def store_of_arrays(classes: dict) -> ImageStore:
    """The store {class name: uint8 (n, H, W, 3)} should give: classes sorted by name, images in order."""
    names = sorted(classes)
    images = torch.from_numpy(np.concatenate([classes[n] for n in names])).permute(0, 3, 1, 2)
    counts = torch.tensor([0, *(len(classes[n]) for n in names)])
    return ImageStore(images.contiguous(), counts.cumsum(0), tuple(names))


def assert_same(store, expected):
    assert store.images.shape == expected.images.shape and store.images.dtype == torch.uint8
    assert torch.equal(store.images, expected.images)
    assert torch.equal(store.offsets, expected.offsets)
    assert store.class_names == expected.class_names
