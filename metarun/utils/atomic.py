"""Files written atomically: into a private temporary file beside the target, then renamed over it."""

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any failure it is removed.

    The temporary name is unique per writer, so parallel jobs building the same file (a sweep filling one
    dataset cache) never write into each other's half-finished file; a kill leaves at most a hidden temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that refused the write may refuse this too: the write's own error is the one to see
