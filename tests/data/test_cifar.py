"""CIFAR-FS and FC100: a tiny CIFAR-100 in the official python layout (archive and extracted folder) loads to the
expected classes and pixels; the published split lists; damaged or missing files; the download; the CLI."""

import hashlib
import io
import json
import pickle
import tarfile
from functools import partial

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from metarun.config import store
from metarun.data import build_tasks, cifar
from metarun.data.cifar import CIFAR_FS_SPLITS, FC100_SPLITS, SUPERCLASSES, load_classes
from metarun.utils.errors import RunError
from tests.conftest import run_cli
from tests.data.formats import Payload, assert_refused, python2_pickle

TRAIN, TEST = 3, 1  # images per class in the fixture's train and test pickles
FINE = sorted(fine for classes in SUPERCLASSES.values() for fine in classes)
COARSE = sorted(SUPERCLASSES)


@pytest.fixture(scope="module")
def pickles():
    """{"train", "test", "meta"}: the official pickles' dicts (bytes keys), label names deliberately not sorted."""
    rng = np.random.default_rng(0)
    fine_names, coarse_names = list(rng.permutation(FINE)), list(rng.permutation(COARSE))
    superclass = {fine: coarse for coarse, classes in SUPERCLASSES.items() for fine in classes}
    parts = {"meta": {b"fine_label_names": [n.encode() for n in fine_names],
                      b"coarse_label_names": [n.encode() for n in coarse_names]}}
    for part, count in (("train", TRAIN), ("test", TEST)):
        labels = rng.permutation(np.repeat(np.arange(100), count))  # classes interleaved, as in the real files
        parts[part] = {b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                       b"fine_labels": labels.tolist(),
                       b"coarse_labels": [coarse_names.index(superclass[fine_names[f]]) for f in labels]}
    return parts


def expected_images(pickles) -> dict:
    """{``<superclass>/<class>``: uint8 [600-like, 3, 32, 32]}: each class's train images, then its test images."""
    fine, coarse = (pickles["meta"][k] for k in (b"fine_label_names", b"coarse_label_names"))
    classes = {}
    for part in ("train", "test"):
        data = pickles[part]
        for row, f, c in zip(data[b"data"], data[b"fine_labels"], data[b"coarse_labels"]):
            classes.setdefault(f"{coarse[c].decode()}/{fine[f].decode()}", []).append(row.reshape(3, 32, 32))
    return {name: np.stack(images) for name, images in classes.items()}


def write_folder(root, pickles, dumps=partial(pickle.dumps, protocol=2)):
    folder = root / cifar.FOLDER
    folder.mkdir(parents=True)
    for name, data in pickles.items():
        (folder / name).write_bytes(dumps(data))
    return folder


def write_archive(root, pickles):
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / cifar.ARCHIVE, "w:gz") as archive:
        for name, data in pickles.items():
            blob = pickle.dumps(data, protocol=2)
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return root / cifar.ARCHIVE


def dataset_cfg(name, root, cache, *overrides):
    """The composed ``dataset`` node of conf/dataset/<name>.yaml, reading from ``root``."""
    store.register()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={name}", f"dataset.root={root}", f"dataset.cache_dir={cache}",
                                           "dataset.download=false", *overrides])
    return cfg.dataset


def assert_store_holds(store, images: dict):
    assert store.class_names == tuple(sorted(images))
    for c, name in enumerate(store.class_names):
        assert torch.equal(store.images[store.offsets[c]:store.offsets[c + 1]], torch.from_numpy(images[name])), name


# the official files are Python 2's pickles; the fixture's others are Python 3's at protocol 2
LAYOUTS = {"archive": write_archive, "folder": write_folder,
           "python2 folder": lambda root, pickles: write_folder(root, pickles, python2_pickle)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_archive_and_folder_give_each_class_its_images_in_order(layout, pickles, tmp_path):
    LAYOUTS[layout](tmp_path / "data", pickles)
    store = load_classes(dataset_cfg("cifarfs", tmp_path / "data", tmp_path / "cache"))
    assert store.images.shape == (100 * (TRAIN + TEST), 3, 32, 32)
    assert_store_holds(store, expected_images(pickles))  # 32x32 kept exactly: no resampling


def test_other_image_sizes_are_resized_into_their_own_cache(pickles, tmp_path):
    write_archive(tmp_path / "data", pickles)
    small = load_classes(dataset_cfg("fc100", tmp_path / "data", tmp_path / "cache", "dataset.image_size=16"))
    assert small.images.shape[-1] == 16
    assert load_classes(dataset_cfg("cifarfs", tmp_path / "data", tmp_path / "cache")).images.shape[-1] == 32
    assert len(list((tmp_path / "cache").glob("cifar100-*.store"))) == 2


def test_a_known_image_lands_in_its_class_after_that_class_s_training_images(pickles, tmp_path):
    """Rows are RGB planes: the first test image of a class, made red 10, green 20 and blue 0..1023 in row-major
    order, is that class's image number TRAIN."""
    pickles = {**pickles, "test": {**pickles["test"], b"data": pickles["test"][b"data"].copy()}}
    pickles["test"][b"data"][0] = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256])
    fine = pickles["meta"][b"fine_label_names"][pickles["test"][b"fine_labels"][0]].decode()
    coarse = pickles["meta"][b"coarse_label_names"][pickles["test"][b"coarse_labels"][0]].decode()
    write_folder(tmp_path / "data", pickles)
    store = load_classes(dataset_cfg("fc100", tmp_path / "data", tmp_path / "cache"))
    image = store.images[store.offsets[store.class_names.index(f"{coarse}/{fine}")] + TRAIN]
    assert (image[0] == 10).all() and (image[1] == 20).all()
    assert image[2, 1, 0] == 32 and image[2, 0, 1] == 1 and image[2, 7, 31] == (7 * 32 + 31) % 256


def test_published_splits_have_their_counts_and_are_disjoint():
    assert len(SUPERCLASSES) == 20 and all(len(classes) == 5 for classes in SUPERCLASSES.values())
    assert len(set(FINE)) == 100
    splits = {split: set(classes) for split, classes in CIFAR_FS_SPLITS.items()}
    assert {split: len(classes) for split, classes in CIFAR_FS_SPLITS.items()} == {"train": 64, "val": 16, "test": 20}
    assert set.union(*splits.values()) == set(FINE) and sum(map(len, splits.values())) == 100
    superclasses = {split: set(names) for split, names in FC100_SPLITS.items()}
    assert {split: len(names) for split, names in superclasses.items()} == {"train": 12, "val": 4, "test": 4}
    assert set.union(*superclasses.values()) == set(COARSE) and sum(map(len, superclasses.values())) == 20


# sha256 of torchmeta's split files (tristandeleu/pytorch-meta d55d89e, torchmeta/datasets/assets/cifar100/)
TORCHMETA_SHA256 = {
    "cifar-fs/train.json": "e0feef3aef13fc7320d5deef5ae77d91edd28041d9a173939ec48cea68135ef0",
    "cifar-fs/val.json": "d9d6e267b5dad5c2267ff7dd98ebb18bb016f7929b56839422bb34fb53bcb3ef",
    "cifar-fs/test.json": "e199c74ef4f014ea3f74da1b6cf74795d32747183426c2a7e6ee4308d3bf47e3",
    "fc100/train.json": "a19e219adef452c071eb09d14758a9c45562643b9aafa38826e679ed285e117b",
    "fc100/val.json": "6d228dac7040959f0c2f0385c53c2cd9a5369ba9eefd1b7cdceecb47041598c4",
    "fc100/test.json": "d2cf86db6ec0250993b18cb78ebde10758f06eaaaff1611390e4442ee7c6fc41",
}


def test_split_lists_are_torchmeta_s_published_files():
    """The package's lists, written as torchmeta's JSON files, hash to those files: a typo or a class paired with
    the wrong superclass fails here."""
    superclass = {fine: coarse for coarse, classes in SUPERCLASSES.items() for fine in classes}
    for split in ("train", "val", "test"):
        files = {f"cifar-fs/{split}.json": sorted([superclass[fine], fine] for fine in CIFAR_FS_SPLITS[split]),
                 f"fc100/{split}.json": list(FC100_SPLITS[split])}
        for name, content in files.items():
            written = json.dumps(content, separators=(",", ":")).encode()
            assert hashlib.sha256(written).hexdigest() == TORCHMETA_SHA256[name], name


@pytest.mark.parametrize("name", ["cifarfs", "fc100"])
def test_each_dataset_draws_each_split_from_its_published_classes(name, pickles, tmp_path):
    write_archive(tmp_path / "data", pickles)
    cfg = dataset_cfg(name, tmp_path / "data", tmp_path / "cache", "dataset.queries=2")
    tasks = build_tasks(cfg, torch.device("cpu"))
    classes = {split: set(sampler.store.class_names) for split, sampler in tasks.samplers.items()}
    for split, names in classes.items():
        if name == "cifarfs":
            assert {n.split("/")[1] for n in names} == set(CIFAR_FS_SPLITS[split])
        else:
            assert {n.split("/")[0] for n in names} == set(FC100_SPLITS[split])
            assert len(names) == 5 * len(FC100_SPLITS[split])  # every class of its superclasses
    assert tasks.normalisation == tuple(list(v) for v in cifar.NORMALISATION)
    assert tasks.sample(2, torch.Generator().manual_seed(0)).support_x.shape == (2, 5, 3, 32, 32)


def no_cache_left(cache):
    return not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "missing meta"])
def test_a_damaged_archive_is_one_line_naming_it_and_leaves_no_cache(damage, pickles, tmp_path):
    if damage == "missing meta":
        path = write_archive(tmp_path / "data", {k: v for k, v in pickles.items() if k != "meta"})
    else:
        path = write_archive(tmp_path / "data", pickles)
        data = bytearray(path.read_bytes())
        if damage == "truncated":
            data = data[: len(data) - 4]  # only the gzip trailer's length is lost: every member still reads
        else:
            data[len(data) // 2] ^= 0xFF  # random pixels are stored uncompressed: only gzip's CRC sees this
        path.write_bytes(bytes(data))
    fix = "delete it and rerun to download it again"
    with pytest.raises(RunError, match=rf"^cannot read CIFAR-100 from {path} .*{fix}") as error:
        load_classes(dataset_cfg("cifarfs", tmp_path / "data", tmp_path / "cache"))
    assert "\n" not in str(error.value) and no_cache_left(tmp_path / "cache")


@pytest.mark.parametrize("damage", ["missing meta", "wrong keys", "wrong shape"])
def test_a_damaged_folder_is_one_line_naming_it(damage, pickles, tmp_path):
    folder = write_folder(tmp_path / "data", pickles)
    if damage == "missing meta":
        (folder / "meta").unlink()
    elif damage == "wrong keys":
        (folder / "train").write_bytes(pickle.dumps({b"images": []}))
    else:
        (folder / "test").write_bytes(pickle.dumps({**pickles["test"], b"data": pickles["test"][b"data"][:, :100]}))
    with pytest.raises(RunError, match=rf"^cannot read CIFAR-100 from {folder} .*replace it") as error:
        load_classes(dataset_cfg("fc100", tmp_path / "data", tmp_path / "cache"))
    assert "\n" not in str(error.value) and no_cache_left(tmp_path / "cache")


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_a_pickle_that_would_run_code_is_refused_and_leaves_no_cache(layout, pickles, tmp_path):
    marker = tmp_path / "marker"
    written = LAYOUTS[layout](tmp_path / "data", {**pickles, "train": Payload(marker)})
    name = f"{written}:{cifar.FOLDER}/train" if layout == "archive" else written / "train"
    with pytest.raises(RunError) as caught:
        load_classes(dataset_cfg("cifarfs", tmp_path / "data", tmp_path / "cache"))
    assert_refused(str(caught.value), name, marker)
    assert "a CIFAR-100 python pickle never holds" in str(caught.value) and cifar.URL in str(caught.value)
    assert no_cache_left(tmp_path / "cache")


def test_missing_files_without_download_fail_at_once_naming_the_address(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "download", lambda *args: pytest.fail("tried the network"))
    with pytest.raises(FileNotFoundError, match=rf"CIFAR-100 is not in {tmp_path}: expected cifar-100-python.tar.gz .*"
                                                 r"https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"):
        load_classes(dataset_cfg("cifarfs", tmp_path, tmp_path / "cache"))


def test_download_fetches_the_archive_with_its_md5(pickles, tmp_path, server, monkeypatch):
    served = write_archive(tmp_path / "served", pickles)
    monkeypatch.setattr(cifar, "URL", f"{server}/{cifar.ARCHIVE}")
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(served.read_bytes()).hexdigest())
    store = load_classes(dataset_cfg("cifarfs", tmp_path / "data", tmp_path / "cache", "dataset.download=true"))
    assert (tmp_path / "data" / cifar.ARCHIVE).read_bytes() == served.read_bytes()
    assert_store_holds(store, expected_images(pickles))
    monkeypatch.setattr(cifar, "MD5", "0" * 32)
    with pytest.raises(RunError, match="has md5 .* expected 0{32}"):
        load_classes(dataset_cfg("fc100", tmp_path / "other", tmp_path / "cache", "dataset.download=true"))
    assert not (tmp_path / "other" / cifar.ARCHIVE).exists()


def test_config_defaults_follow_the_papers(tmp_path):
    for name in ("cifarfs", "fc100"):
        store.register()
        with initialize_config_module("metarun.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"dataset={name}", "paths.data_dir=/data"])
        dataset = cfg.dataset
        assert (dataset.name, dataset.root, dataset.image_size, dataset.download) == (name, "/data/cifar100", 32, True)
        assert cfg.model._target_ == "metarun.models.conv4.Conv4"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifarfs", "fc100"])
def test_cli_meta_trains_and_tests(name, pickles, tmp_path):
    write_archive(tmp_path / "data", pickles)
    run = run_cli("algo=protonet", f"dataset={name}", f"dataset.root={tmp_path / 'data'}",
                  f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.queries=2", "model.width=8", "train.iterations=2",
                  "train.val_every=2", "eval.episodes=2", "eval.val_episodes=2", "hardware=cpu", "hardware.num_threads=1",
                  "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == name and 0 <= results["test/acc"] <= 1


@pytest.mark.slow
def test_cli_without_the_files_and_download_is_a_one_line_error(tmp_path):
    run = run_cli("dataset=fc100", f"dataset.root={tmp_path}", "dataset.download=false", "hardware=cpu",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"metarun: error: CIFAR-100 is not in {tmp_path}: expected")
