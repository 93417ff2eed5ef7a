"""metrics.jsonl: one JSON object per logged step, flushed as it is written."""

import json
import math
from pathlib import Path


def to_json_value(value):
    """A JSON-safe number: tensors become floats, non-finite floats become null."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends ``{"step": …, "split/name": …}`` lines to a file (appending keeps a resumed run's history)."""

    def __init__(self, path: Path):
        """Open ``path`` for appending."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        """Write one line for ``step``."""
        record = {"step": step, **{k: to_json_value(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def finish(self, results) -> None:
        """Close the file (the final results go to results.json, not here)."""
        self._file.close()
