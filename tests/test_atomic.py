"""atomic_path: the target changes only on success, and no temporary file outlives the write."""

import pytest

from metarun.utils.atomic import atomic_path


def test_success_replaces_the_target_and_failure_leaves_it_untouched(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_two_writers_get_distinct_temporary_files(tmp_path):
    with atomic_path(tmp_path / "cache.pt") as first, atomic_path(tmp_path / "cache.pt") as second:
        assert first != second
        first.write_text("a")
        second.write_text("b")
    assert (tmp_path / "cache.pt").read_text() == "a"
