"""miniImageNet readers: tiny fixtures in each format found in the wild load to the same store."""

import json
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from metarun.data.miniimagenet import SPLITS, load_split
from metarun.data.store import ImageStore
from metarun.errors import RunError

CLASSES, IMAGES, SIZE = 5, 20, 84


@pytest.fixture(scope="module")
def pixels():
    """{split: {wnid: uint8 (IMAGES, 84, 84, 3)}}, wnids deliberately not in sorted order."""
    rng = np.random.default_rng(0)
    return {
        split: {f"n{(7 * c + s) % 10:02d}{split}": rng.integers(0, 256, (IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
                for c in range(CLASSES)}
        for s, split in enumerate(SPLITS)
    }


def write_pickle(root, pixels, val_name="validation"):
    for split, classes in pixels.items():
        wnids = list(classes)
        data = {"image_data": np.concatenate([classes[w] for w in wnids]),
                "class_dict": {w: list(range(i * IMAGES, (i + 1) * IMAGES)) for i, w in enumerate(wnids)}}
        name = val_name if split == "val" else split
        (root / f"mini-imagenet-cache-{name}.pkl").write_bytes(pickle.dumps(data))


def write_hdf5(root, pixels):
    h5py = pytest.importorskip("h5py")
    for split, classes in pixels.items():
        with h5py.File(root / f"{split}_data.hdf5", "w") as f:
            for wnid, images in classes.items():
                f.create_dataset(f"datasets/{wnid}", data=images)
        (root / f"{split}_labels.json").write_text(json.dumps(list(classes)))


def write_csv(root, pixels):
    (root / "images").mkdir()
    for split, classes in pixels.items():
        rows = ["filename,label"]
        for wnid, images in classes.items():
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / "images" / f"{wnid}{i:05d}.png")
                rows.append(f"{wnid}{i:05d}.png,{wnid}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


WRITERS = {"pickle": write_pickle, "hdf5": write_hdf5, "csv": write_csv}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, pixels):
    """One pristine folder per format; tests copy one before writing caches into it."""
    folders = {}
    for name, write in WRITERS.items():
        folders[name] = tmp_path_factory.mktemp(name)
        write(folders[name], pixels)
    return folders


def copy_of(sources, name, tmp_path):
    return shutil.copytree(sources[name], tmp_path / name)


def expected_store(classes) -> ImageStore:
    wnids = sorted(classes)
    images = torch.from_numpy(np.concatenate([classes[w] for w in wnids])).permute(0, 3, 1, 2)
    return ImageStore(images.contiguous(), torch.arange(len(wnids) + 1) * IMAGES, tuple(wnids))


def assert_same(store, expected):
    assert store.images.shape == expected.images.shape and store.images.dtype == torch.uint8
    assert torch.equal(store.images, expected.images)
    assert torch.equal(store.offsets, expected.offsets)
    assert store.class_names == expected.class_names


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_loads_the_same_pixels_and_classes(name, sources, pixels, tmp_path):
    root = copy_of(sources, name, tmp_path)
    for split in SPLITS:
        assert_same(load_split(root, split), expected_store(pixels[split]))
    assert len(list((root / ".metarun-cache").glob("*.pt"))) == len(SPLITS)


def test_pickle_val_split_may_be_named_val(pixels, tmp_path):
    write_pickle(tmp_path, pixels, val_name="val")
    assert_same(load_split(tmp_path, "val"), expected_store(pixels["val"]))


def test_second_load_reads_the_cache_not_the_sources(sources, pixels, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    load_split(root, "train")
    for source in root.glob("*.pkl"):
        source.unlink()
    assert_same(load_split(root, "train"), expected_store(pixels["train"]))


def test_csv_images_of_another_size_are_resized(pixels, tmp_path):
    write_csv(tmp_path, {"test": pixels["test"]})
    Image.fromarray(pixels["test"][next(iter(pixels["test"]))][0]).resize((100, 120)).save(next(tmp_path.glob("images/*.png")))
    store = load_split(tmp_path, "test")
    assert store.images.shape == (CLASSES * IMAGES, 3, SIZE, SIZE)


def test_corrupt_pickle_is_one_error_naming_it_and_leaves_no_cache(pixels, tmp_path):
    write_pickle(tmp_path, pixels)
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(RunError, match="mini-imagenet-cache-train.pkl.*replace it"):
        load_split(tmp_path, "train")
    assert not list(tmp_path.glob(".metarun-cache/*"))
    path.write_bytes(good)
    assert_same(load_split(tmp_path, "train"), expected_store(pixels["train"]))


def test_truncated_hdf5_is_one_error_naming_it(sources, tmp_path):
    root = copy_of(sources, "hdf5", tmp_path)
    path = root / "val_data.hdf5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RunError, match="val_data.hdf5"):
        load_split(root, "val")
    assert not list(root.glob(".metarun-cache/*"))


def test_corrupt_image_is_one_error_naming_it(sources, tmp_path):
    root = copy_of(sources, "csv", tmp_path)
    broken = root / "images" / (root / "train.csv").read_text().splitlines()[4].split(",")[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(RunError, match=broken.name):
        load_split(root, "train")
    assert not list(root.glob(".metarun-cache/*"))


def test_folder_without_a_known_format_names_every_format(tmp_path):
    (tmp_path / "stray.txt").write_text("not miniImageNet")
    with pytest.raises(FileNotFoundError) as caught:
        load_split(tmp_path, "train")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    for expected in ("mini-imagenet-cache-", "_data.hdf5", "_labels.json", "images/", ".csv"):
        assert expected in message


def test_hdf5_without_h5py_says_how_to_install_it(sources, tmp_path, monkeypatch):
    root = copy_of(sources, "hdf5", tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(RunError, match="pip install h5py"):
        load_split(root, "test")


def test_unreadable_cache_is_the_store_error(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    load_split(root, "test")
    (cache,) = root.glob(".metarun-cache/*")
    cache.write_bytes(b"not a torch file")
    with pytest.raises(RunError, match="delete it and rerun"):
        load_split(root, "test")
    cache.unlink()
    assert load_split(root, "test").num_classes == CLASSES
