"""Shared by the dataset-format tests: pristine fixture folders written once per format, copied per test, the
store the fixture's pixels should give, pickles as Python 2 wrote them, and a crafted pickle that runs code."""

import io
import os
import pickle
import shutil
import struct

import numpy as np
import torch

from metarun.data.files.store import ImageStore


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


class Python2Pickler(pickle._Pickler):
    """Writes protocol 2 as Python 2 with numpy 1.x did (Ren et al.'s and CIFAR's files): str and bytes as Python 2's
    str (``BINSTRING``, no ``_codecs.encode``) and numpy's functions under ``numpy.core``, not numpy 2's ``numpy._core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def python2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle would have at protocol 2."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


class Payload:
    """Unpickles by running ``touch <marker>``: what a crafted dataset file does (any code; this one is harmless)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


SYSTEM = f"{os.system.__module__}.system"  # how a pickle names os.system: posix.system on Linux


def assert_refused(message: str, name, marker):
    """``message`` is one line naming the file ``name`` and the global the payload asked for, which never ran."""
    assert "\n" not in message
    assert f"{name} asks the unpickler for {SYSTEM}, which " in message and "(a pickle can run code)" in message
    assert not marker.exists()
