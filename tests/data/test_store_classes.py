"""ImageStore class selection, concatenation, its cache file (whole or built by chunks) and the build-once cache."""

import errno
import mmap
import os
from pathlib import Path

import pytest
import torch

from metarun.data.files.store import ImageStore, cached_store, cached_store_by_chunks, fingerprint
from metarun.utils.errors import RunError


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

    first, again = cached_store(tmp_path / "s.store", build), cached_store(tmp_path / "s.store", build)
    assert len(calls) == 1 and torch.equal(first.images, again.images) and again.class_names == first.class_names
    assert [p.name for p in tmp_path.iterdir()] == ["s.store"]


def test_fingerprint_changes_with_the_files(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.png").write_bytes(b"1")
    before = fingerprint(tmp_path / "tree")
    assert fingerprint(tmp_path / "tree") == before
    (tmp_path / "tree" / "a.png").write_bytes(b"12")
    assert fingerprint(tmp_path / "tree") != before
    with pytest.raises(FileNotFoundError):
        fingerprint(tmp_path / "missing.zip")


def test_a_store_file_round_trips_memory_mapped(tmp_path):
    store = store_of([2, 3, 1])
    store.save(tmp_path / "s.store")
    loaded = ImageStore.load(tmp_path / "s.store")
    assert torch.equal(loaded.images, store.images) and torch.equal(loaded.offsets, store.offsets)
    assert loaded.class_names == store.class_names
    loaded.images[0] = 99  # copy-on-write: a writable tensor, while the file stays as built
    assert ImageStore.load(tmp_path / "s.store").images[0].item() == store.images[0].item()


def test_a_chunked_build_writes_each_chunk_into_the_file(tmp_path):
    whole = store_of([3, 4, 2])

    def fill(images, written):
        for start in range(0, len(images), 2):  # chunks that cut through classes
            images[start:start + 2] = whole.images[start:start + 2]

    built = cached_store_by_chunks(tmp_path / "s.store", lambda: (whole.class_names, whole.counts.tolist(), (1, 1, 1), fill))
    assert torch.equal(built.images, whole.images) and built.class_names == whole.class_names
    again = cached_store_by_chunks(tmp_path / "s.store", lambda: pytest.fail("planned (and so read the sources) twice"))
    assert torch.equal(again.images, whole.images)


def test_rows_released_while_building_stay_in_the_file_and_leave_the_process_s_memory(tmp_path):
    """``written(rows)`` drops the written pages from the process (its resident set), not from the file: a cache
    larger than RAM builds with flat memory."""
    rows, side = 512, 64  # one page per image (4 KiB): 2 MiB in all
    pattern = torch.arange(rows * side * side, dtype=torch.int64).remainder(251).to(torch.uint8).view(rows, 1, side, side)
    resident = []

    def fill(images, written):
        for start in range(0, rows, 64):
            images[start:start + 64] = pattern[start:start + 64]
            written(start + 64)
            resident.append(resident_pages(images))

    built = cached_store_by_chunks(tmp_path / "s.store", lambda: (("a", "b"), [200, 312], (1, side, side), fill))
    assert torch.equal(built.images, pattern)
    assert max(resident) <= 2, resident  # at most the pages a chunk boundary cuts, never the 512 written


def resident_pages(images: torch.Tensor) -> int:
    """How many pages of the mapping under ``images`` are in this process's resident set (/proc/self/smaps)."""
    address, lines = images.data_ptr(), Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        first, _, rest = line.partition(" ")
        if "-" in first and not first.endswith(":"):
            low, high = (int(part, 16) for part in first.split("-"))
            if low <= address < high:
                rss = next(entry for entry in lines[i + 1:] if entry.startswith("Rss:"))
                return int(rss.split()[1]) * 1024 // mmap.PAGESIZE
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_failed_chunked_build_leaves_nothing(tmp_path):
    def fill(images, written):
        images[:2] = 7
        raise RuntimeError("a corrupt image in the second chunk")

    with pytest.raises(RuntimeError, match="second chunk"):
        cached_store_by_chunks(tmp_path / "s.store", lambda: (("a",), [4], (1, 2, 2), fill))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_cache_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(RunError, match=r"cannot write the dataset cache .*s\.store \(No space left on device\); free space"):
        cached_store(tmp_path / "s.store", lambda: store_of([2, 2]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_a_damaged_store_file_names_the_file_to_delete(tmp_path, damage):
    store_of([2, 3]).save(tmp_path / "s.store")
    data = (tmp_path / "s.store").read_bytes()
    (tmp_path / "s.store").write_bytes(data[:-1] if damage == "truncate" else b"x" + data[1:])
    with pytest.raises(RunError, match=r"cannot read the dataset cache .*s\.store .*delete it and rerun"):
        ImageStore.load(tmp_path / "s.store")
