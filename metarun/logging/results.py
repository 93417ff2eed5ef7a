"""results.json: the final metrics of a run, written atomically."""

import json
import os
from pathlib import Path

from metarun.logging.jsonl import to_json_value


def write_results(path: Path, results: dict) -> None:
    """Write ``results`` as pretty JSON through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({k: to_json_value(v) for k, v in results.items()}, indent=2) + "\n")
    os.replace(tmp, path)
