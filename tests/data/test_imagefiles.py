"""Reading class-folder image trees from folders and zips, and the errors for bad input."""

import threading
import time
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
from imagetrees import write_tree, zip_tree
from PIL import Image

from metarun.data.files.imagefiles import read_images
from metarun.utils.errors import RunError

SMALL1 = {"alphabets": 5, "characters": 136, "images": 2720}
SMALL2 = {"alphabets": 5, "characters": 156, "images": 3120}


def zip_counts(path) -> dict:
    """Alphabets, characters, images and drawers per character, counted from the zip's names."""
    names = [n.split("/") for n in zipfile.ZipFile(path).namelist() if n.endswith(".png")]
    drawers = Counter((a, c) for _, a, c, _ in names)
    return {"alphabets": len({a for _, a, _, _ in names}), "characters": len(drawers), "images": len(names),
            "drawers": set(drawers.values()), "drawer_ids": {f.rsplit("_", 1)[1] for *_, f in names}}


@pytest.mark.parametrize("name,truth", [("images_background_small1.zip", SMALL1), ("images_background_small2.zip", SMALL2)])
def test_real_subsets_load_with_their_counts(omniglot_dir, name, truth):
    counted = zip_counts(omniglot_dir / name)
    assert {k: counted[k] for k in truth} == truth  # the README's figures
    assert counted["drawers"] == {20} and len(counted["drawer_ids"]) == 20
    store = read_images(omniglot_dir / name, 28, 1)
    assert store.images.shape == (truth["images"], 1, 28, 28) and store.images.dtype == torch.uint8
    assert store.num_classes == truth["characters"] and set(store.counts.tolist()) == {20}
    assert len({c.split("/")[0] for c in store.class_names}) == truth["alphabets"]
    assert store.class_names[0] in ("Balinese/character01", "Greek/character01")
    # white background, black strokes, antialiased edges in between
    assert store.images.max() == 255 and store.images.min() == 0 and store.images.float().mean() > 200
    assert len(store.images.unique()) > 2


def test_full_size_images_are_the_original_binary_pixels(omniglot_dir):
    store = read_images(omniglot_dir / "images_background_small1.zip", 105, 1)
    with zipfile.ZipFile(omniglot_dir / "images_background_small1.zip") as archive:
        with archive.open("images_background_small1/Balinese/character01/0108_01.png") as file:
            original = np.array(Image.open(file).convert("L"))
    assert torch.equal(store.images[0, 0], torch.from_numpy(original))
    assert set(store.images.unique().tolist()) == {0, 255}


def test_a_zip_is_never_read_by_two_threads_at_once(tmp_path, monkeypatch):
    # Python 3.12's ZipFile corrupts concurrent reads ("Overlapped entries"); 3.11 tolerates them, so the test
    # checks the contract itself: a read that finds another one in progress fails
    write_tree(tmp_path / "tree", {f"alpha/char{i}": 4 for i in range(8)})
    inside, real_read = threading.Semaphore(1), zipfile.ZipFile.read

    def exclusive_read(archive, name, pwd=None):
        assert inside.acquire(blocking=False), "two threads read the zip at once"
        try:
            time.sleep(0.001)  # widen the window a concurrent read would hit
            return real_read(archive, name, pwd)
        finally:
            inside.release()

    monkeypatch.setattr(zipfile.ZipFile, "read", exclusive_read)
    store = read_images(zip_tree(tmp_path / "tree", tmp_path / "tree.zip"), 12, 1)
    assert store.images.shape == (32, 1, 12, 12)


def test_folder_and_zip_read_the_same_nested_tree(tmp_path):
    written = write_tree(tmp_path / "tree", {"alpha/char1": 3, "alpha/char2": 2, "beta/char1": 4})
    folder = read_images(tmp_path / "tree", 12, 1)
    wrapped = zip_tree(tmp_path / "tree", tmp_path / "wrapped.zip", wrapper="tree/")
    with zipfile.ZipFile(wrapped, "a") as archive:  # what macOS adds to zips: not images, skipped
        archive.writestr("__MACOSX/tree/alpha/char1/._000.png", b"resource fork")
        archive.writestr("tree/alpha/char1/.hidden.png", b"not an image")
    wrapped = read_images(wrapped, 12, 1)
    bare = read_images(zip_tree(tmp_path / "tree", tmp_path / "bare.zip"), 12, 1)
    assert folder.class_names == ("alpha/char1", "alpha/char2", "beta/char1") == wrapped.class_names == bare.class_names
    assert folder.offsets.tolist() == [0, 3, 5, 9]
    assert torch.equal(folder.images, wrapped.images) and torch.equal(folder.images, bare.images)
    assert torch.equal(folder.images[5, 0], torch.from_numpy(written["beta/char1"][0]))  # same size: no resampling


def test_rgb_jpeg_and_grey_conversion(tmp_path):
    write_tree(tmp_path / "rgb", {"cat": 2, "dog": 2}, size=20, mode="RGB", suffix=".jpg")
    rgb = read_images(tmp_path / "rgb", 8, 3)
    grey = read_images(tmp_path / "rgb", 8, 1)
    assert rgb.images.shape == (4, 3, 8, 8) and grey.images.shape == (4, 1, 8, 8)


@pytest.mark.parametrize("layout,message", [
    ({"": 0}, "no .png/.jpg/.jpeg images"),
    ({".": 2}, "images outside class folders"),
])
def test_wrong_layout_is_one_line_naming_the_expected_layout(tmp_path, layout, message):
    (tmp_path / "tree").mkdir()
    write_tree(tmp_path / "tree", layout)
    with pytest.raises(RunError, match=f"{message}.*expected <root>/<class>/<image>.png"):
        read_images(tmp_path / "tree", 8, 1)


def test_missing_corrupt_and_truncated_inputs_name_the_file(tmp_path, omniglot_dir):
    with pytest.raises(FileNotFoundError, match="nowhere.zip does not exist"):
        read_images(tmp_path / "nowhere.zip", 8, 1)
    (tmp_path / "noise.zip").write_bytes(b"not a zip at all" * 100)
    with pytest.raises(RunError, match="noise.zip is not a readable zip"):
        read_images(tmp_path / "noise.zip", 8, 1)
    data = (omniglot_dir / "images_background_small1.zip").read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="truncated.zip is not a readable zip"):
        read_images(tmp_path / "truncated.zip", 8, 1)


def test_corrupt_image_or_member_is_named(tmp_path):
    write_tree(tmp_path / "tree", {"a": 2, "b": 2})
    (tmp_path / "tree" / "b" / "001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RunError, match=r"cannot decode .*tree/b/001.png .*replace or remove"):
        read_images(tmp_path / "tree", 8, 1)
    # a zip whose member bytes are damaged (the CRC no longer matches)
    write_tree(tmp_path / "good", {"a": 2, "b": 2})
    path = zip_tree(tmp_path / "good", tmp_path / "damaged.zip")
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 16] = bytes(16)
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"cannot decode .*damaged.zip/a/000.png"):
        read_images(path, 8, 1)


@pytest.mark.parametrize("entry", ["../../etc/x.png", "a/../../x.png", "/etc/a/x.png", "C:/a/x.png", "..\\a\\x.png"])
def test_a_zip_entry_pointing_outside_the_archive_is_refused_naming_it(entry, tmp_path):
    write_tree(tmp_path / "tree", {"a": 2, "b": 2})
    path = zip_tree(tmp_path / "tree", tmp_path / "crafted.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo(entry), (tmp_path / "tree" / "a" / "000.png").read_bytes())
    with pytest.raises(RunError) as caught:
        read_images(path, 8, 1)
    assert str(caught.value) == (f"{path} holds the entry {entry}, which points outside the archive; metarun refuses "
                                 "it: use the official archive, or a zip whose entries are relative paths inside it")
