"""CUB-200-2011: Chen et al.'s split, tiny fixtures in each format (the official archive, its extracted folder where
it is extracted and where learn2learn puts it, torchmeta's hdf5) load to the same store; damaged or missing files;
the download; the config and the CLI on top."""

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from metarun.config import store
from metarun.data import build_tasks, cub
from metarun.data.cub import ARCHIVE, CLASSES, IMAGES, NORMALISATION, SPLITS, load_split, split_classes
from metarun.data.files.imagefiles import image_to_array
from metarun.data.files.store import ImageStore
from metarun.utils.errors import RunError
from tests.conftest import run_cli

SIZE = 16  # pixels per side of the stores the tests build
# sha256 of torchmeta's torchmeta/datasets/assets/cub/{split}.json (pytorch-meta commit d55d89e), compact JSON lists
TORCHMETA_SHA256 = {"train": "ec90b228abb6100266ec7efd5513ec62d42c2507ccb366f25c42debfd2b5da2e",
                    "val": "fff92a7293e7e529185a3d2be7d6ec3956fafe916996668384d7bc5d798b8903",
                    "test": "41c79218a7bd4c2f805623e52e4fa9653e28e063638e8121efcd81183cf7ecc5"}


def chen_split(classes, split):
    """Chen et al.'s filelists/CUB/write_CUB_filelist.py restated: over the sorted class folders, base (meta-train)
    takes index i % 2 == 0, val i % 4 == 1, novel (meta-test) i % 4 == 3."""
    keep = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "test": lambda i: i % 4 == 3}[split]
    return [name for i, name in enumerate(sorted(classes)) if keep(i)]


def test_the_split_is_chen_et_al_rule_with_the_published_counts():
    splits = {split: split_classes(CLASSES, split) for split in SPLITS}
    assert {split: len(names) for split, names in splits.items()} == {"train": 100, "val": 50, "test": 50}
    assert set(splits["train"]).isdisjoint(splits["val"]) and set(splits["val"]).isdisjoint(splits["test"])
    assert set(splits["train"]).isdisjoint(splits["test"])
    assert sorted(sum(splits.values(), ())) == sorted(CLASSES) and len(set(CLASSES)) == len(CLASSES)
    assert [name.split(".")[0] for name in CLASSES] == [f"{n:03d}" for n in range(1, len(CLASSES) + 1)]
    for split, names in splits.items():
        assert list(names) == chen_split(CLASSES, split)


def test_the_rule_holds_for_any_class_list_in_any_order():
    names = [f"{n:03d}.Fake_Bird_{n}" for n in np.random.default_rng(0).permutation(np.arange(1, 13))]
    for split in SPLITS:
        assert list(split_classes(names, split)) == chen_split(names, split)


def test_the_split_lists_are_torchmeta_assets_byte_for_byte():
    for split, digest in TORCHMETA_SHA256.items():
        text = json.dumps(list(split_classes(CLASSES, split)), separators=(",", ":"))
        assert hashlib.sha256(text.encode()).hexdigest() == digest, split


@pytest.fixture(scope="module")
def photos():
    """{class: {file name: JPEG bytes}} for every CUB class: 2 or 3 small photographs of random sizes (12 in the first
    class, so that image 10 sorts after image 2), some greyscale (as some CUB photographs are), file names written out
    of sorted order."""
    rng = np.random.default_rng(0)
    photos = {}
    for index, name in enumerate(CLASSES):
        species, files = name.split(".", 1)[1], {}
        for j in range(12 if index == 0 else 2 + index % 2):
            height, width = rng.integers(8, 24, 2)
            shape = (height, width) if (index + j) % 7 == 0 else (height, width, 3)
            encoded = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(encoded, "JPEG")
            files[f"{species}_{20 - j:04d}_{rng.integers(10**6)}.jpg"] = encoded.getvalue()
        photos[name] = files
    return photos


def write_folder(root, photos, place=""):
    for name, files in photos.items():
        folder = root / place / IMAGES / name
        folder.mkdir(parents=True)
        for file, data in files.items():
            (folder / file).write_bytes(data)
    (root / place / "CUB_200_2011" / "classes.txt").write_text("\n".join(photos))  # the archive's other files


def write_tgz(root, photos):
    members = {"attributes.txt": b"1 has_bill_shape::curved\n", "CUB_200_2011/classes.txt": "\n".join(photos).encode()}
    members |= {f"{IMAGES}/{name}/{file}": data for name, files in photos.items() for file, data in files.items()}
    items = list(members.items())
    with tarfile.open(root / ARCHIVE, "w:gz") as archive:
        for index in np.random.default_rng(1).permutation(len(items)):  # in no particular order, as a tar may be
            member, data = items[index]
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def write_hdf5(root, photos):
    """torchmeta's files: one encoded JPEG (vlen uint8) per image, in sorted file order, and the labels."""
    h5py = pytest.importorskip("h5py")
    for split in SPLITS:
        names = [name for name in chen_split(CLASSES, split) if name in photos]
        with h5py.File(root / f"{split}_data.hdf5", "w") as data:
            for name in names:
                images = data.create_dataset(f"datasets/{name}", (len(photos[name]),), dtype=h5py.vlen_dtype(np.uint8))
                for i, file in enumerate(sorted(photos[name])):
                    images[i] = np.frombuffer(photos[name][file], dtype=np.uint8)
        (root / f"{split}_labels.json").write_text(json.dumps(names))


WRITERS = {"tgz": write_tgz, "folder": write_folder, "hdf5": write_hdf5,
           "learn2learn": lambda root, photos: write_folder(root, photos, "cubirds200")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, photos):
    """``sources(name)``: a pristine folder in format ``name``, written on first use; tests copy it."""
    folders = {}

    def folder(name):
        if name not in folders:
            path = tmp_path_factory.mktemp(name)
            WRITERS[name](path, photos)  # skips the asking test where h5py is missing
            folders[name] = path
        return folders[name]

    return folder


def copy_of(sources, name, tmp_path):
    return shutil.copytree(sources(name), tmp_path / name)


def expected_store(photos, split) -> ImageStore:
    """The split's photographs decoded straight from their JPEG bytes, classes and files in sorted order."""
    names = chen_split(photos, split)
    arrays = [image_to_array(Image.open(io.BytesIO(photos[name][file])), SIZE, 3)
              for name in names for file in sorted(photos[name])]
    offsets = torch.tensor([0, *(len(photos[name]) for name in names)]).cumsum(0)
    return ImageStore(torch.from_numpy(np.stack(arrays)), offsets, tuple(names))


def assert_same(store, expected):
    assert store.images.dtype == torch.uint8 and torch.equal(store.images, expected.images)
    assert torch.equal(store.offsets, expected.offsets)
    assert store.class_names == expected.class_names


def no_cache_left(root):
    return not list((root / ".metarun-cache").glob("*"))


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_loads_the_same_store(name, sources, photos, tmp_path):
    root = copy_of(sources, name, tmp_path)
    for split in SPLITS:
        assert_same(load_split(root, split, SIZE), expected_store(photos, split))
    assert len(list((root / ".metarun-cache").glob("cub-*.store"))) == len(SPLITS)


def test_greyscale_photographs_become_rgb(sources, photos, tmp_path):
    store = load_split(copy_of(sources, "tgz", tmp_path), "train", SIZE)
    files = [photos[name][file] for name in store.class_names for file in sorted(photos[name])]
    row = next(i for i, data in enumerate(files) if Image.open(io.BytesIO(data)).mode == "L")
    grey = store.images[row]
    assert grey.shape == (3, SIZE, SIZE) and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_the_archive_wins_over_other_formats(sources, photos, tmp_path):
    root = copy_of(sources, "hdf5", tmp_path)
    write_tgz(root, photos)
    (root / "val_data.hdf5").write_bytes(b"never read")
    assert_same(load_split(root, "val", SIZE), expected_store(photos, "val"))


def test_second_load_reads_the_cache_not_the_sources(sources, photos, tmp_path, monkeypatch):
    root = copy_of(sources, "tgz", tmp_path)
    load_split(root, "test", SIZE)
    monkeypatch.setattr(cub, "decode_classes", lambda *args: pytest.fail("decoded the sources again"))
    assert_same(load_split(root, "test", SIZE), expected_store(photos, "test"))


def test_a_replaced_archive_gets_a_new_cache(sources, photos, tmp_path):
    root = copy_of(sources, "tgz", tmp_path)
    load_split(root, "val", SIZE)
    swapped = {name: dict(zip(files, reversed(files.values()))) for name, files in photos.items()}
    write_tgz(root, swapped)
    path = root / ARCHIVE  # a replacement comes later than the file it replaces, even where clocks are coarse
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert_same(load_split(root, "val", SIZE), expected_store(swapped, "val"))
    assert len(list((root / ".metarun-cache").glob("cub-val-*.store"))) == 2


def one_line_error(error_type, call, *expected):
    """The message of the error ``call()`` raises: one line holding every ``expected`` text."""
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(text in message for text in expected), message
    return message


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_archive_is_one_error_naming_it_and_leaves_no_cache(damage, sources, tmp_path):
    root = copy_of(sources, "tgz", tmp_path)
    path = root / ARCHIVE
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    data = data[:half] if damage == "truncated" else data[:half] + bytes(8) + data[half + 8:]
    path.write_bytes(bytes(data))
    one_line_error(RunError, lambda: load_split(root, "train", SIZE), str(path), "download it again", cub.URL)
    assert no_cache_left(root)


@pytest.mark.parametrize("name", ["tgz", "folder"])
def test_corrupt_photograph_is_one_error_naming_it_and_leaves_no_cache(name, photos, tmp_path):
    victim = split_classes(photos, "test")[3]
    file = sorted(photos[victim])[1]
    damaged = {**photos, victim: {**photos[victim], file: photos[victim][file][:60]}}
    WRITERS[name](tmp_path, damaged)
    one_line_error(RunError, lambda: load_split(tmp_path, "test", SIZE), f"{victim}/{file}", "replace it")
    assert no_cache_left(tmp_path)


@pytest.mark.parametrize("name", ["tgz", "folder", "hdf5"])
def test_missing_class_is_one_error_naming_it_and_leaves_no_cache(name, photos, tmp_path):
    victim = split_classes(photos, "train")[7]
    WRITERS[name](tmp_path, {key: files for key, files in photos.items() if key != victim})
    one_line_error(RunError, lambda: load_split(tmp_path, "train", SIZE), f"{victim}/", "whole CUB_200_2011.tgz")
    assert no_cache_left(tmp_path)


def test_truncated_hdf5_is_one_error_naming_it(sources, tmp_path):
    root = copy_of(sources, "hdf5", tmp_path)
    path = root / "val_data.hdf5"
    path.write_bytes(path.read_bytes()[:1000])
    one_line_error(RunError, lambda: load_split(root, "val", SIZE), str(path), "torchmeta")
    assert no_cache_left(root)


def test_hdf5_without_h5py_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "test_data.hdf5").write_bytes(b"")  # never opened: the import fails first
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    one_line_error(RunError, lambda: load_split(tmp_path, "test", SIZE), "pip install h5py")


def test_without_files_or_download_the_error_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(cub, "fetch", lambda *args: pytest.fail("touched the network"))
    one_line_error(FileNotFoundError, lambda: load_split(tmp_path, "train", SIZE, download=False),
                   str(tmp_path), ARCHIVE, cub.URL, cub.MD5, "dataset.download=true")


@pytest.fixture
def served(tmp_path, server, photos, monkeypatch):  # noqa: F811 (the imported fixture)
    """The fixture archive on the local server, with ``cub.URL`` and ``cub.MD5`` pointing at it."""
    write_tgz(tmp_path / "served", photos)
    monkeypatch.setattr(cub, "URL", f"{server}/{ARCHIVE}")
    monkeypatch.setattr(cub, "MD5", hashlib.md5((tmp_path / "served" / ARCHIVE).read_bytes()).hexdigest())


def test_download_fetches_the_archive_when_nothing_is_there(served, photos, tmp_path):
    root = tmp_path / "root"
    assert_same(load_split(root, "val", SIZE, download=True), expected_store(photos, "val"))
    assert (root / ARCHIVE).read_bytes() == (tmp_path / "served" / ARCHIVE).read_bytes()


def test_download_with_a_wrong_checksum_leaves_nothing(served, tmp_path, monkeypatch):
    monkeypatch.setattr(cub, "MD5", "0" * 32)
    root = tmp_path / "root"
    one_line_error(RunError, lambda: load_split(root, "val", SIZE, download=True), ARCHIVE, "has md5")
    assert not any(root.rglob("*"))


def composed(*overrides):
    """The whole config with conf/dataset/cub.yaml, as Hydra composes it."""
    store.register()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=["dataset=cub", *overrides])


def test_config_defaults_follow_the_paper():
    cfg = composed("paths.data_dir=/data", "paths.cache_dir=/cache")
    dataset = cfg.dataset
    assert (dataset.ways, dataset.shots, dataset.image_size, dataset.augment) == (5, 1, 84, False)
    assert dataset.download  # fetched when missing, as the other image datasets
    assert (dataset.root, dataset.cache_dir) == ("/data/cub", "/cache")
    assert cfg.model._target_ == "metarun.models.conv4.Conv4"


def test_config_builds_a_source_with_imagenet_normalisation(sources, tmp_path):
    root = copy_of(sources, "tgz", tmp_path)
    overrides = f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}", f"dataset.image_size={SIZE}"
    tasks = build_tasks(composed(*overrides, "dataset.queries=1").dataset, torch.device("cpu"))
    batch = tasks.sample(2, torch.Generator().manual_seed(0))
    assert tasks.normalisation == tuple(list(values) for values in NORMALISATION)
    assert tasks.input_shape == (3, SIZE, SIZE) and batch.query_x.shape == (2, 5, 3, SIZE, SIZE)
    assert {split: sampler.store.class_names for split, sampler in tasks.samplers.items()} == \
        {split: tuple(split_classes(CLASSES, split)) for split in SPLITS}


@pytest.mark.slow
def test_cli_meta_trains_and_tests_on_cub(sources, tmp_path):
    root = copy_of(sources, "tgz", tmp_path)
    run = run_cli("algo=protonet", "dataset=cub", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}",
                  f"dataset.image_size={SIZE}", "dataset.queries=1", "model.width=8", "train.iterations=2",
                  "train.meta_batch_size=2", "train.val_every=2", "eval.episodes=2", "eval.val_episodes=2",
                  "eval.batch_size=2", "hardware=cpu", "hardware.num_threads=1", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == "cub" and 0 <= results["test/acc"] <= 1
    assert len(list((tmp_path / "cache").glob("cub-*-16px-*.store"))) == len(SPLITS)


@pytest.mark.slow
def test_cli_without_the_files_is_a_one_line_error(tmp_path):
    run = run_cli("dataset=cub", f"dataset.root={tmp_path}", "dataset.download=false", "hardware=cpu",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"metarun: error: no CUB-200-2011 in {tmp_path}")
