"""Errors that end a run with a one-line message instead of a traceback."""

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

PREFIX = "metarun: error: "  # how every one-line report starts (a sweep's job report, found in its log, too)
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota on a cluster's shared one


class RunError(RuntimeError):
    """A run cannot go on (bad data, a non-finite loss, a missing device); the message says what to do."""


class StartRefused(BaseException):
    """A run that cannot start, raised where Hydra would turn an ``Exception`` into a warning (its callbacks); the
    CLI reports it in one line."""


@contextmanager
def writing(path: Path, needed: int = 0, run_dir: Optional[Path] = None) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into ``write_error``'s one-line RunError."""
    try:
        yield
    except OSError as err:
        raise write_error(Path(path), err, needed, run_dir) from err


def write_error(path: Path, err: Exception, needed: int = 0, run_dir: Optional[Path] = None) -> RunError:
    """The error saying in one line why ``path`` could not be written (read-only, no space, other) and what to do.

    Args:
        needed: about how many bytes the write needed (0: unknown).
        run_dir: the run directory the file belongs to, named in the hint to continue the run.
    """
    folder = path.parent if path.parent.exists() else next(p for p in path.parents if p.exists())
    if getattr(err, "errno", None) in READ_ONLY:
        return RunError(f"cannot write {path}: {folder} is read-only for this process; make it writable or set "
                        "hydra.run.dir elsewhere")
    free = shutil.disk_usage(folder).free
    if getattr(err, "errno", None) in NO_SPACE or free < needed:
        amounts = f"{size_text(free)} free" + (f", about {size_text(needed)} needed" if needed else "")
        from metarun.utils.resume_hint import same_command  # here: Hydra's parser loads only for this message

        again = same_command(run_dir) if run_dir else "the command again"
        return RunError(f"cannot write {path}: no space left on the device of {folder} ({amounts}); free some space "
                        f"and run {again} to continue")
    return RunError(f"cannot write {path} ({err.__class__.__name__}: {first_line(err)})")


def first_line(err: Exception) -> str:
    """The first line of ``err``'s message ("" for none): enough to say which failure it was, on one line."""
    return (str(err).splitlines() or [""])[0]


def size_text(count: int) -> str:
    """``count`` bytes as e.g. "12.3 MB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
