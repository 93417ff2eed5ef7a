"""miniImageNet: tiny fixtures in each format found in the wild load to the same store; the task source,
its config and the CLI on top."""

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from metarun.config import store
from metarun.data import build_tasks, miniimagenet
from metarun.data.miniimagenet import NORMALISATION, SPLITS, load_split
from metarun.data.sampling.sampler import EpisodeSampler
from metarun.utils.errors import RunError
from tests.conftest import run_cli
from tests.data.formats import Payload, assert_refused, assert_same, copy_of, pristine_folders, store_of_arrays

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
        # rows of all classes interleaved, so only class_dict says which image is whose
        order = np.random.default_rng(1).permutation(len(wnids) * IMAGES)
        where = np.argsort(order)  # where[r]: the position of stacked row r in image_data
        data = {"image_data": np.concatenate([classes[w] for w in wnids])[order],
                "class_dict": {w: where[i * IMAGES:(i + 1) * IMAGES].tolist() for i, w in enumerate(wnids)}}
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
    """``sources(name)``: a pristine folder in format ``name``, written on first use; tests copy it."""
    return pristine_folders(tmp_path_factory, WRITERS, pixels)



@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_loads_the_same_pixels_and_classes(name, sources, pixels, tmp_path):
    root = copy_of(sources, name, tmp_path)
    for split in SPLITS:
        assert_same(load_split(root, split), store_of_arrays(pixels[split]))
    assert len(list((root / ".metarun-cache").glob("*.store"))) == len(SPLITS)


def test_pickle_val_split_may_be_named_val(pixels, tmp_path):
    write_pickle(tmp_path, pixels, val_name="val")
    assert_same(load_split(tmp_path, "val"), store_of_arrays(pixels["val"]))


def test_second_load_reads_the_cache_not_the_sources(sources, pixels, tmp_path, monkeypatch):
    root = copy_of(sources, "pickle", tmp_path)
    load_split(root, "train")
    monkeypatch.setattr(miniimagenet, "decode_classes", lambda *args: pytest.fail("decoded the sources again"))
    assert_same(load_split(root, "train"), store_of_arrays(pixels["train"]))


def test_a_replaced_source_file_gets_a_new_cache(pixels, tmp_path):
    write_pickle(tmp_path, pixels)
    load_split(tmp_path, "train")
    reversed_pixels = {split: {wnid: images[::-1].copy() for wnid, images in classes.items()} for split, classes in pixels.items()}
    write_pickle(tmp_path, reversed_pixels)
    for path in tmp_path.glob("*.pkl"):  # a replacement comes later than the file it replaces, even where clocks are coarse
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert_same(load_split(tmp_path, "train"), store_of_arrays(reversed_pixels["train"]))
    assert len(list((tmp_path / ".metarun-cache").glob("miniimagenet-train-*.store"))) == 2


def test_csv_images_of_another_size_are_resized(pixels, tmp_path):
    write_csv(tmp_path, {"test": pixels["test"]})
    Image.fromarray(pixels["test"][next(iter(pixels["test"]))][0]).resize((100, 120)).save(next(tmp_path.glob("images/*.png")))
    store = load_split(tmp_path, "test")
    assert store.images.shape == (CLASSES * IMAGES, 3, SIZE, SIZE)


def test_other_image_sizes_get_their_own_cache(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    assert load_split(root, "val", image_size=32).images.shape == (CLASSES * IMAGES, 3, 32, 32)
    assert load_split(root, "val").images.shape == (CLASSES * IMAGES, 3, SIZE, SIZE)
    assert len(list(root.glob(".metarun-cache/*.store"))) == 2


def test_corrupt_pickle_is_one_error_naming_it_and_leaves_no_cache(pixels, tmp_path):
    write_pickle(tmp_path, pixels)
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(RunError, match="mini-imagenet-cache-train.pkl.*replace it"):
        load_split(tmp_path, "train")
    assert not list(tmp_path.glob(".metarun-cache/*"))
    path.write_bytes(good)
    assert_same(load_split(tmp_path, "train"), store_of_arrays(pixels["train"]))


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


def test_hdf5_without_h5py_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "test_data.hdf5").write_bytes(b"")  # never opened: the import fails first
    (tmp_path / "test_labels.json").write_text("[]")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(RunError, match="pip install h5py"):
        load_split(tmp_path, "test")


def test_unreadable_cache_is_the_store_error(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    load_split(root, "test")
    (cache,) = root.glob(".metarun-cache/*")
    cache.write_bytes(b"not a torch file")
    with pytest.raises(RunError, match="delete it and rerun"):
        load_split(root, "test")
    cache.unlink()
    assert load_split(root, "test").num_classes == CLASSES


def composed(*overrides):
    """The whole config with conf/dataset/miniimagenet.yaml, as Hydra composes it."""
    store.register()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=["dataset=miniimagenet", *overrides])


def dataset_config(root, *overrides):
    """The composed ``dataset`` node, reading from ``root``."""
    return composed(f"dataset.root={root}", *overrides).dataset


def test_config_defaults_follow_the_papers():
    cfg = composed("paths.data_dir=/data", "paths.cache_dir=/cache")
    dataset = cfg.dataset
    assert (dataset.ways, dataset.shots, dataset.queries, dataset.image_size, dataset.augment) == (5, 1, 15, 84, False)
    assert (dataset.root, dataset.cache_dir) == ("/data/miniimagenet", "/cache")
    assert cfg.model._target_ == "metarun.models.conv4.Conv4"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_config_builds_a_five_way_one_shot_source(sources, tmp_path):
    tasks = build_tasks(dataset_config(copy_of(sources, "pickle", tmp_path)), torch.device("cpu"))
    batch = tasks.sample(2, seeded(0))
    assert tasks.objective == "classification" and tasks.input_shape == (3, SIZE, SIZE) and tasks.output_dim == 5
    assert batch.support_x.shape == (2, 5, 3, SIZE, SIZE) and batch.query_x.shape == (2, 75, 3, SIZE, SIZE)
    assert torch.equal(batch.query_y[0], torch.arange(5).repeat_interleave(15))


def test_augmentation_off_by_default_and_only_for_meta_training(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    plain = build_tasks(dataset_config(root), torch.device("cpu"))
    augmented = build_tasks(dataset_config(root, "dataset.augment=true"), torch.device("cpu"))
    unaugmented = EpisodeSampler(load_split(root, "train"), torch.device("cpu"), *NORMALISATION).sample(2, seeded(0), 5, 1, 15)
    assert torch.equal(plain.sample(2, seeded(0)).support_x, unaugmented.support_x)
    assert not torch.equal(augmented.sample(2, seeded(0)).support_x, unaugmented.support_x)
    assert torch.equal(plain.episodes("val", 0, 0, 2).query_x, augmented.episodes("val", 0, 0, 2).query_x)


def test_cli_meta_trains_and_tests_on_miniimagenet(sources, tmp_path):
    root = copy_of(sources, "pickle", tmp_path)
    run = run_cli("algo=fomaml", "dataset=miniimagenet", f"dataset.root={root}", "dataset.queries=2", "model.width=8",
                  "train.iterations=2", "train.meta_batch_size=2", "train.val_every=2", "eval.episodes=2",
                  "eval.val_episodes=2", "eval.batch_size=2", "algo.test_inner_steps=1", "hardware=cpu",
                  "hardware.num_threads=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == "miniimagenet" and 0 <= results["test/acc"] <= 1


def test_cli_without_the_files_is_a_one_line_error(tmp_path):
    run = run_cli("dataset=miniimagenet", f"dataset.root={tmp_path}", "hardware=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"metarun: error: no miniImageNet train split in {tmp_path}")


def test_cli_refuses_a_pickle_that_would_run_code(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps({"image_data": Payload(marker), "class_dict": {}}))
    run = run_cli("algo=protonet", "dataset=miniimagenet", f"dataset.root={tmp_path}", "hardware=cpu", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"metarun: error: {path} asks the unpickler for ") and "miniImageNet pickle never holds" in last
    assert_refused(last, path, marker)
    assert not list(tmp_path.glob(".metarun-cache/*"))
