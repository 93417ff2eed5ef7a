"""ImageStore class selection, concatenation and the build-once cache."""

import pytest
import torch

from metarun.data.store import ImageStore, cached_store, fingerprint


def store_of(counts: list, first: int = 0) -> ImageStore:
    images = torch.arange(first, first + sum(counts), dtype=torch.uint8).view(-1, 1, 1, 1)
    return ImageStore(images, torch.tensor([0, *counts]).cumsum(0), tuple(f"c{first + i}" for i in range(len(counts))))


def test_select_keeps_each_class_whole_in_the_order_given():
    picked = store_of([2, 3, 1, 4]).select([3, 0, 2])
    assert picked.class_names == ("c3", "c0", "c2") and picked.offsets.tolist() == [0, 4, 6, 7]
    assert picked.images.flatten().tolist() == [6, 7, 8, 9, 0, 1, 5]
    assert store_of([2, 3]).select([]).num_classes == 0


def test_cat_appends_classes():
    both = ImageStore.cat([store_of([2, 1]), store_of([3], first=10)])
    assert both.class_names == ("c0", "c1", "c10") and both.offsets.tolist() == [0, 2, 3, 6]
    assert both.images.flatten().tolist() == [0, 1, 2, 10, 11, 12]


def test_cached_store_builds_once(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return store_of([2, 2])

    first, again = cached_store(tmp_path / "s.pt", build), cached_store(tmp_path / "s.pt", build)
    assert len(calls) == 1 and torch.equal(first.images, again.images) and again.class_names == first.class_names
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_fingerprint_changes_with_the_files(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.png").write_bytes(b"1")
    before = fingerprint(tmp_path / "tree")
    assert fingerprint(tmp_path / "tree") == before
    (tmp_path / "tree" / "a.png").write_bytes(b"12")
    assert fingerprint(tmp_path / "tree") != before
    with pytest.raises(FileNotFoundError):
        fingerprint(tmp_path / "missing.zip")
