"""tieredImageNet: tiny fixtures in torchmeta's hdf5 and Ren et al.'s pickles load to the same store, built in
chunks; damaged or missing files are one-line errors that leave no cache; the config and the CLI on top."""

import io
import json
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from metarun.config import store
from metarun.data import build_tasks, tieredimagenet
from metarun.data.files.store import ImageStore
from metarun.data.tieredimagenet import PUBLISHED, SPLITS, load_split
from metarun.utils.errors import RunError
from tests.data.formats import (
    Payload,
    assert_refused,
    assert_same,
    copy_of,
    pristine_folders,
    python2_pickle,
    store_of_arrays,
)

CATEGORIES, CLASSES_PER_CATEGORY, IMAGES, SIZE = 3, 2, 4, 16


@pytest.fixture(scope="module")
def classes():
    """{split: {class name: (category, uint8 (IMAGES, SIZE, SIZE, 3))}} in label order, which is not name order."""
    rng = np.random.default_rng(0)
    codes = iter(rng.permutation(len(SPLITS) * CATEGORIES * CLASSES_PER_CATEGORY))
    return {
        split: {f"n{next(codes):08d}": (f"{split}-category{c // CLASSES_PER_CATEGORY}",
                                        rng.integers(0, 256, (IMAGES, SIZE, SIZE, 3), dtype=np.uint8))
                for c in range(CATEGORIES * CLASSES_PER_CATEGORY)}
        for split in SPLITS
    }


def png(image: np.ndarray) -> np.ndarray:
    """A PNG as cv2.imencode gives it (and Ren et al.'s pickles hold it): uint8 [bytes, 1]."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).reshape(-1, 1)


def write_pickle(folder, classes, dumps=pickle.dumps):
    """Ren et al.'s files (pickled by ``dumps``) with the classes' images interleaved (each class's in order), so
    only label_specific says which image is whose."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_classes in classes.items():
        names = list(split_classes)
        categories = sorted({category for category, _ in split_classes.values()})
        images, specific, general = [], [], []
        for label, (name, (category, pixels)) in enumerate(split_classes.items()):
            images += [png(image) for image in pixels]
            specific += [label] * len(pixels)
            general += [categories.index(category)] * len(pixels)
        order = np.lexsort((specific, np.arange(len(images)) % IMAGES))  # first images of every class, then seconds...
        labels = {"label_specific": np.array(specific)[order], "label_general": np.array(general)[order],
                  "label_specific_str": names, "label_general_str": categories}
        (folder / f"{split}_images_png.pkl").write_bytes(dumps([images[i] for i in order]))
        (folder / f"{split}_labels.pkl").write_bytes(dumps(labels))


def write_hdf5(folder, classes):
    """torchmeta's conversion: one variable-length uint8 dataset of PNGs per class, the labels in a json list."""
    h5py = pytest.importorskip("h5py")
    for split, split_classes in classes.items():
        with h5py.File(folder / f"{split}_data.hdf5", "w") as f:
            group = f.create_group("datasets")
            for name, (category, pixels) in split_classes.items():
                dataset = group.create_dataset(name, (len(pixels),), dtype=h5py.special_dtype(vlen=np.uint8))
                dataset.attrs["label_general"], dataset.attrs["label_specific"] = category, name
                for i, image in enumerate(pixels):
                    dataset[i] = png(image).squeeze(1)
        (folder / f"{split}_labels.json").write_text(json.dumps(list(split_classes)))


WRITERS = {"hdf5": write_hdf5, "pickle": write_pickle,
           "pickle-subfolder": lambda root, classes: write_pickle(root / "tiered-imagenet", classes),
           "pickle-python2": lambda root, classes: write_pickle(root, classes, python2_pickle)}  # as Ren et al. made them


@pytest.fixture(scope="module")
def sources(tmp_path_factory, classes):
    """``sources(name)``: a pristine folder in format ``name``, written on first use; tests copy it."""
    return pristine_folders(tmp_path_factory, WRITERS, classes)


def expected_store(split_classes) -> ImageStore:
    return store_of_arrays({name: pixels for name, (_, pixels) in split_classes.items()})


def left_in(root):
    """Everything in root's default cache folder: caches and temporary files alike."""
    return list((root / ".metarun-cache").glob("*")) if (root / ".metarun-cache").exists() else []


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_loads_the_same_pixels_and_classes(name, sources, classes, tmp_path):
    root = copy_of(sources, name, tmp_path)
    for split in SPLITS:
        # PNG is lossless and the size unchanged, so the store holds the fixture's pixels exactly
        assert_same(load_split(root, split, image_size=SIZE), expected_store(classes[split]))
    names = sorted(path.name for path in left_in(root))
    assert [name.split("-")[:3] for name in names] == [["tieredimagenet", split, f"{SIZE}px"] for split in sorted(SPLITS)]
    assert all(name.endswith(".store") for name in names)


def test_each_split_has_exactly_its_classes_and_splits_are_disjoint(sources, classes, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    names = {split: load_split(root, split, image_size=SIZE).class_names for split in SPLITS}
    for split in SPLITS:
        assert set(names[split]) == set(classes[split]) and len(names[split]) == len(classes[split])
    assert not set(names["train"]) & set(names["val"]) and not set(names["train"]) & set(names["test"])
    assert not set(names["val"]) & set(names["test"])


def test_published_split_sizes_add_up_to_the_papers_totals():
    # Ren et al. (2018): 608 classes in 34 categories, split 351/97/160 classes and 20/6/8 categories
    assert sum(classes for classes, _ in PUBLISHED.values()) == 608
    assert sum(categories for _, categories in PUBLISHED.values()) == 34
    assert set(PUBLISHED) == set(SPLITS)


def test_a_split_of_other_than_the_published_size_is_warned_about(sources, tmp_path, capsys):
    load_split(copy_of(sources, "pickle", tmp_path), "val", image_size=SIZE)
    warning = capsys.readouterr().out
    assert f"has {CATEGORIES * CLASSES_PER_CATEGORY} classes where Ren et al.'s has {PUBLISHED['val'][0]}" in warning


def test_hdf5_is_read_when_both_formats_are_present(sources, classes, tmp_path, monkeypatch):
    root = copy_of(sources, "hdf5", tmp_path)
    write_pickle(root, classes)
    monkeypatch.setattr(tieredimagenet, "_unpickle", lambda *args: pytest.fail("read the pickles, not the hdf5"))
    assert_same(load_split(root, "test", image_size=SIZE), expected_store(classes["test"]))


def test_images_of_another_size_are_resized_into_their_own_cache(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    assert load_split(root, "val", image_size=8).images.shape == (CATEGORIES * CLASSES_PER_CATEGORY * IMAGES, 3, 8, 8)
    load_split(root, "val", image_size=SIZE)
    assert len(left_in(root)) == 2


@pytest.mark.parametrize("name", ["hdf5", "pickle"])
def test_chunks_smaller_than_a_class_build_the_same_store(name, sources, classes, tmp_path, monkeypatch):
    monkeypatch.setattr(tieredimagenet, "CHUNK_IMAGES", IMAGES - 1)  # chunks straddle class boundaries
    assert_same(load_split(copy_of(sources, name, tmp_path), "train", image_size=SIZE), expected_store(classes["train"]))


def test_second_load_reads_the_cache_not_the_sources(sources, classes, tmp_path, monkeypatch):
    root = copy_of(sources, "pickle", tmp_path)
    load_split(root, "train", image_size=SIZE)
    monkeypatch.setattr(tieredimagenet, "decode_into", lambda *args: pytest.fail("decoded the sources again"))
    assert_same(load_split(root, "train", image_size=SIZE), expected_store(classes["train"]))


def test_a_corrupt_image_in_a_later_chunk_is_one_error_and_leaves_no_cache_nor_temp_file(classes, tmp_path, monkeypatch):
    write_pickle(tmp_path, classes)
    path = tmp_path / "train_images_png.pkl"
    images = pickle.loads(path.read_bytes())
    labels = pickle.loads((tmp_path / "train_labels.pkl").read_bytes())
    # the first image of the store's second class: in the second chunk of IMAGES - 1 images
    second_class = sorted(range(len(labels["label_specific_str"])), key=labels["label_specific_str"].__getitem__)[1]
    victim = int(np.flatnonzero(labels["label_specific"] == second_class)[0])
    images[victim] = images[victim][:60]
    path.write_bytes(pickle.dumps(images))
    monkeypatch.setattr(tieredimagenet, "CHUNK_IMAGES", IMAGES - 1)
    decoded, decode = [], tieredimagenet.png_image

    def counted(item):
        decoded.append(decode(item))
        return decoded[-1]

    monkeypatch.setattr(tieredimagenet, "png_image", counted)
    with pytest.raises(RunError, match="train_images_png.pkl.*replace it") as caught:
        load_split(tmp_path, "train", image_size=SIZE)
    assert "\n" not in str(caught.value) and "does not decode" in str(caught.value)
    assert len(decoded) >= IMAGES - 1  # the first chunk was decoded (and written) before the failure
    assert not left_in(tmp_path)


def test_truncated_pickle_is_one_error_naming_it_and_leaves_no_cache(classes, tmp_path):
    write_pickle(tmp_path, classes)
    path = tmp_path / "val_images_png.pkl"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(RunError, match="val_images_png.pkl.*replace it"):
        load_split(tmp_path, "val", image_size=SIZE)
    assert not left_in(tmp_path)
    path.write_bytes(good)
    assert_same(load_split(tmp_path, "val", image_size=SIZE), expected_store(classes["val"]))


@pytest.mark.parametrize("damage, says", [
    (lambda labels: b"not a pickle", "UnpicklingError"),
    (lambda labels: pickle.dumps({**labels, "label_specific": labels["label_specific"] + 100}), "outside 0..5"),
    (lambda labels: pickle.dumps({**labels, "label_specific": labels["label_specific"][1:]}), "holds 24 images but"),
    (lambda labels: pickle.dumps({k: v for k, v in labels.items() if k != "label_specific"}), "KeyError"),
])
def test_damaged_labels_are_one_error_naming_the_files(damage, says, classes, tmp_path):
    write_pickle(tmp_path, classes)
    path = tmp_path / "test_labels.pkl"
    path.write_bytes(damage(pickle.loads(path.read_bytes())))
    with pytest.raises(RunError, match="test_labels.pkl") as caught:
        load_split(tmp_path, "test", image_size=SIZE)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert not left_in(tmp_path)


def test_a_read_error_while_building_is_a_damaged_file_not_a_failed_cache_write(classes, tmp_path, monkeypatch):
    write_pickle(tmp_path, classes)
    unpickle = tieredimagenet._unpickle

    def failing(path, encoding):  # the images pickle is read inside the cache's writer, which blames OSErrors on the disk
        if path.name.endswith("_images_png.pkl"):
            raise OSError(5, "Input/output error")
        return unpickle(path, encoding)

    monkeypatch.setattr(tieredimagenet, "_unpickle", failing)
    with pytest.raises(RunError, match="cannot read tieredImageNet train from .*train_images_png.pkl.*Input/output error"):
        load_split(tmp_path, "train", image_size=SIZE)
    assert not left_in(tmp_path)


@pytest.mark.parametrize("crafted", ["train_labels.pkl", "train_images_png.pkl"])
def test_a_pickle_that_would_run_code_is_refused_and_leaves_no_cache(crafted, classes, tmp_path):
    write_pickle(tmp_path, classes)
    marker, path = tmp_path / "marker", tmp_path / crafted
    path.write_bytes(pickle.dumps([Payload(marker)]))
    with pytest.raises(RunError) as caught:
        load_split(tmp_path, "train", image_size=SIZE)
    assert_refused(str(caught.value), path, marker)
    assert "a tieredImageNet pickle never holds" in str(caught.value) and not left_in(tmp_path)


def test_truncated_hdf5_is_one_error_naming_it_and_leaves_no_cache(sources, tmp_path):
    root = copy_of(sources, "hdf5", tmp_path)
    path = root / "val_data.hdf5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RunError, match="val_data.hdf5.*replace it"):
        load_split(root, "val", image_size=SIZE)
    assert not left_in(root)


def test_hdf5_without_h5py_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "test_data.hdf5").write_bytes(b"")  # never opened: the import fails first
    (tmp_path / "test_labels.json").write_text("[]")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(RunError, match="pip install h5py"):
        load_split(tmp_path, "test")


def test_folder_without_a_known_format_names_every_format(tmp_path):
    (tmp_path / "val_images_png.pkl").write_bytes(b"")  # half of a pair is no format
    with pytest.raises(FileNotFoundError) as caught:
        load_split(tmp_path, "val")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    for expected in ("_data.hdf5", "_labels.json", "_images_png.pkl", "_labels.pkl", "tiered-imagenet/", "dataset.download"):
        assert expected in message


def composed(*overrides):
    """The whole config with conf/dataset/tieredimagenet.yaml, as Hydra composes it."""
    store.register()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=["dataset=tieredimagenet", *overrides])


def dataset_config(root, *overrides):
    """The composed ``dataset`` node, reading from ``root`` with the fixture's image size."""
    return composed(f"dataset.root={root}", f"dataset.image_size={SIZE}", *overrides).dataset


def test_config_defaults_follow_the_paper():
    cfg = composed("paths.data_dir=/data", "paths.cache_dir=/cache")
    dataset = cfg.dataset
    assert (dataset.ways, dataset.shots, dataset.queries, dataset.image_size, dataset.augment) == (5, 1, 15, 84, False)
    assert (dataset.root, dataset.cache_dir) == ("/data/tieredimagenet", "/cache")
    assert cfg.model._target_ == "metarun.models.conv4.Conv4"


@pytest.mark.parametrize("download", ["true", "false"])
def test_missing_files_fail_at_once_whatever_download_says(download, tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "socket", lambda *args, **kwargs: pytest.fail("touched the network"))
    cfg = dataset_config(tmp_path, f"dataset.download={download}", f"dataset.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(FileNotFoundError, match=f"no tieredImageNet train split in {tmp_path}"):
        build_tasks(cfg, torch.device("cpu"))


def test_config_builds_a_source_that_keeps_store_on(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    tasks = build_tasks(dataset_config(root, "dataset.queries=2", "dataset.store_on=host"), torch.device("cpu"))
    batch = tasks.sample(2, torch.Generator().manual_seed(0))
    assert tasks.input_shape == (3, SIZE, SIZE) and tasks.output_dim == 5
    assert batch.support_x.shape == (2, 5, 3, SIZE, SIZE) and batch.query_x.shape == (2, 10, 3, SIZE, SIZE)
    assert not any(sampler.on_device for sampler in tasks.samplers.values())


@pytest.mark.slow
def test_cli_meta_trains_and_tests_on_tieredimagenet(sources, tmp_path):
    root = copy_of(sources, "hdf5", tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "metarun.runner.cli", "algo=protonet", "dataset=tieredimagenet", f"dataset.root={root}",
         f"dataset.cache_dir={tmp_path / 'cache'}", f"dataset.image_size={SIZE}", "dataset.queries=2", "model.width=8",
         "train.iterations=2", "train.meta_batch_size=2", "train.val_every=2", "eval.episodes=2", "eval.val_episodes=2", "eval.batch_size=2", "hardware=cpu",
         "hardware.num_threads=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == "tieredimagenet" and 0 <= results["test/acc"] <= 1
