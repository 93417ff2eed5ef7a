"""scripts/imaml_memory.py: --quick measures MAML and iMAML, each in a process of its own, and tabulates them."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "imaml_memory.py"
imaml_memory = load_script(SCRIPT, "imaml_memory")


def test_quick_mode_measures_both_algorithms(tmp_path):
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--steps", "2", "--meta-batch", "2",
               "--out", str(tmp_path / "memory.jsonl")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(line["algo"], line["inner_steps"]) for line in lines] == [("maml", 2), ("imaml", 2)]
    for line in lines:
        assert line["device"] == "cpu" and line["mode"] == "loop" and line["network"] == "conv4-4-stride2"
        assert line["seconds"] > 0 and (line["peak_mem_mb"] is None or line["peak_mem_mb"] >= 0)
    assert [json.loads(line) for line in (tmp_path / "memory.jsonl").read_text().splitlines()] == lines
    rows = [row for row in done.stdout.splitlines() if row.startswith("| ")]
    assert rows[0].startswith("| inner steps | maml peak MB | imaml peak MB | imaml / maml |")
    assert len(rows) == 2 and rows[1].startswith("| 2 | ")


def test_the_table_gives_imamls_share_of_mamls_peak():
    lines = [dict(algo="maml", inner_steps=5, peak_mem_mb=40.0, seconds=0.5),
             dict(algo="imaml", inner_steps=5, peak_mem_mb=10.0, seconds=0.7),
             dict(algo="maml", inner_steps=10, peak_mem_mb=None, seconds=0.9),
             dict(algo="imaml", inner_steps=10, peak_mem_mb=None, seconds=1.1)]
    assert imaml_memory.table(lines).splitlines()[2:] == ["| 5 | 40.0 | 10.0 | 0.25 | 0.5 | 0.7 |",
                                                          "| 10 | - | - | - | 0.9 | 1.1 |"]
