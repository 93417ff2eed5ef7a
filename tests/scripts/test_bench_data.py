"""scripts/bench_data.py --quick runs and prints parseable JSON lines for both datasets."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_data.py"


def test_quick_mode_prints_json_lines_for_both_datasets():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_dataset = {name: [line for line in lines if line["dataset"] == name] for name in ("omniglot", "miniimagenet")}
    for name, rows in by_dataset.items():
        if rows and "skipped" in rows[0]:
            continue  # the real Omniglot subset is not on this machine; the line says where it was looked for
        assert {row.get("pipeline") for row in rows} == {"metarun", "conventional", None}
        assert all(row["episodes_per_s"] > 0 for row in rows if "pipeline" in row)
        assert [row["speedup"] for row in rows if row.get("summary")][0] > 0
    assert by_dataset["miniimagenet"] and "skipped" not in by_dataset["miniimagenet"][0]
    variable = [row for row in by_dataset["omniglot"] if row.get("sampler") == "variable against fixed"]
    assert all(row["ratio"] > 0 and row["fixed_ms"] > 0 for row in variable)
    assert variable or "skipped" in by_dataset["omniglot"][0]
