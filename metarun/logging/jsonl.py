"""metrics.jsonl: one JSON object per logged step, flushed as it is written."""

import json
import math
from pathlib import Path

from metarun.utils.atomic import atomic_path
from metarun.utils.errors import writing


def to_json_value(value):
    """``value`` as strict JSON takes it (no NaN or Infinity, which strict readers refuse): tensors become numbers
    or lists, non-finite floats null, in lists and dicts too."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json_value(item) for key, item in value.items()}
    return value


class JsonlWriter:
    """Appends ``{"step": …, "split/name": …}`` lines to a file (appending keeps a resumed run's history)."""

    def __init__(self, path: Path, start: int = 0):
        """Open ``path`` for appending, first dropping its lines after step ``start`` (the resumed checkpoint's
        iteration; 0 for a fresh start), which the run will log again."""
        self.path = path
        with writing(path, run_dir=path.parent):  # a read-only or full disk, at start
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file():
                keep_until(path, start)
            self._file = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        """Write one line for ``step``."""
        line = json.dumps(to_json_value({"step": step, **metrics}), allow_nan=False) + "\n"
        with writing(self.path, len(line), run_dir=self.path.parent):  # a disk that filled up: named, not an errno
            self._file.write(line)
            self._file.flush()

    def finish(self, results) -> None:
        """Close the file (the final results go to results.json, not here)."""
        try:
            self._file.close()
        except OSError:
            pass  # every line was flushed as written: closing fails only after a write failed, which was reported


def keep_until(path: Path, step: int) -> None:
    """Rewrite ``path`` with only its lines up to ``step`` (a line a kill cut short is dropped too)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")
