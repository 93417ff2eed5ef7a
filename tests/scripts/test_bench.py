"""scripts/bench.py --quick runs every setting and prints parseable JSON lines and the summary table."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
KEYS = {"impl", "algo", "setting", "device", "tasks_per_s", "peak_mem_mb"}


def test_quick_mode_measures_every_implementation_of_every_setting():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    measured = [line for line in lines if "tasks_per_s" in line]
    assert all(KEYS <= set(line) and line["tasks_per_s"] > 0 for line in measured)
    impls = {setting: {line["impl"] for line in measured if line["setting"] == setting}
             for setting in ("maml-omniglot", "maml-miniimagenet", "protonet-miniimagenet")}
    for setting, found in impls.items():
        assert {"metarun-auto", "metarun-vmap", "metarun-loop", "reference"} <= found, setting
        assert ("metarun-loop-checkpoint" in found) == setting.startswith("maml"), setting
    assert all(line["chose"] in ("vmap", "loop") for line in measured if line["impl"] == "metarun-auto")
    # higher is optional: measured when it imports, otherwise a note line says it was skipped
    noted = {line["setting"] for line in lines if line.get("impl") == "higher"}
    assert noted == {"maml-omniglot", "maml-miniimagenet"}
    table = [row for row in done.stdout.splitlines() if row.startswith("| ")]
    assert table[0].startswith("| setting | impl | tasks/s | vs reference")
    assert len(table) == 1 + len(measured) and sum("| reference | " in row and "| 1.00x |" in row for row in table) == 3
