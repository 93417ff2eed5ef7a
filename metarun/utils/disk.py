"""Paths on disk that a user chose (a dataset's root, a run directory): a lookup that names a symbolic link loop
rather than calling the path missing, and the folders a step makes (a download, a run's start), removed again
when it fails."""

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from metarun.utils.errors import RunError


def exists(path: Path, setting: str = "dataset.root") -> bool:
    """Whether ``path`` exists, following links; a symbolic link loop on its way is a RunError naming the loop and
    ``setting``, the key that chose the path (``Path.exists`` says False there, which reads as "not found", or as
    "File exists" once a download tries to make the folder)."""
    code = _stat_errno(path)
    if code == errno.ELOOP:
        raise _loop_error(Path(path), setting)
    return code == 0


def _loop_error(path: Path, setting: str) -> RunError:
    """The error naming the link that loops: the first of ``path``'s folders, or ``path`` itself, that cannot be
    looked up for a loop."""
    link = next(p for p in (*reversed(path.parents), path) if _stat_errno(p) == errno.ELOOP)
    return RunError(f"{link} is a symbolic link loop (it points to {os.readlink(link)}, and following it never reaches "
                    f"a file or folder); remove it or point it at the real folder, or set {setting} elsewhere")


def _stat_errno(path: Path) -> int:
    """0 when ``path`` (links followed) can be looked up, else the errno saying why not."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno
    return 0


@contextmanager
def made_folders(folder: Path) -> Iterator[Path]:
    """Make ``folder`` and the missing folders above it; when the block fails, remove those again (``remove_made``)."""
    folder = Path(folder)
    missing = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        remove_made(missing)
        raise


def missing_folders(folder: Path, setting: str = "dataset.root") -> list:
    """``folder`` and the folders above it that do not exist, deepest first (a link loop on the way: ``exists``)."""
    return [path for path in (folder, *folder.parents) if not exists(path, setting)]


def remove_made(made: list) -> None:
    """Remove the folders ``made`` (``missing_folders`` before they were made), deepest first and each only while
    empty: a folder that existed before, or anything put in one, is never deleted."""
    for folder in made:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue  # removed already (a run directory, with what it held)
        except OSError:
            return  # not empty (another job wrote there meanwhile): it and the folders above it stay
