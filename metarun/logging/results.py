"""results.json: the final metrics of a run, written atomically."""

import json
import math
from pathlib import Path

from metarun.logging.jsonl import to_json_value
from metarun.utils.atomic import atomic_path
from metarun.utils.errors import writing


def write_results(path: Path, results: dict) -> None:
    """Write ``results`` as pretty, strict JSON through a temporary file and a rename.

    A non-finite figure (episodes whose inner loop diverged) is written as null, and ``status`` says so:
    ``"ok"``, or ``"nonfinite"`` with the keys concerned in ``nonfinite_keys``.
    """
    record = to_json_value(results)
    nonfinite = [key for key, value in results.items() if holds_nonfinite(value)]
    record["status"] = "nonfinite" if nonfinite else "ok"
    if nonfinite:
        record["nonfinite_keys"] = nonfinite
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    with writing(path, len(text), run_dir=path.parent), atomic_path(path) as tmp:
        tmp.write_text(text)


def holds_nonfinite(value) -> bool:
    """Whether ``value`` (a number, a tensor, or a list or dict of them) is or holds NaN or an infinity."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple, dict)):
        return any(holds_nonfinite(item) for item in (value.values() if isinstance(value, dict) else value))
    return False
