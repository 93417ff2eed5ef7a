"""results.json: the final metrics of a run, written atomically."""

import json
from pathlib import Path

from metarun.atomic import atomic_path
from metarun.errors import writing
from metarun.logging.jsonl import to_json_value


def write_results(path: Path, results: dict) -> None:
    """Write ``results`` as pretty JSON through a temporary file and a rename."""
    text = json.dumps({k: to_json_value(v) for k, v in results.items()}, indent=2) + "\n"
    with writing(path, len(text), run_dir=path.parent), atomic_path(path) as tmp:
        tmp.write_text(text)
