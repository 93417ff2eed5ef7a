"""scripts/omniglot_subsets.py: one cell of the quality-bar table on the real subsets, and a failing cell."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.data.conftest import omniglot_dir  # noqa: F401  (the real subsets, skipped where absent)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "omniglot_subsets.py"


def _script(out, *args, shared):
    env = {**os.environ, "METARUN_SHARED": str(shared)}
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--episodes", "10", *args],
                          capture_output=True, text=True, env=env)


def test_a_cell_trains_within_its_budget_and_lands_in_the_table(omniglot_dir, tmp_path):
    done = _script(tmp_path, "--only", "protonet", "--settings", "5w1s", "--minutes", "0.001", "model.width=8",
                   "dataset.ways=10", "train.log_every=3", "eval.val_episodes=5", shared=omniglot_dir.parents[1])
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.splitlines()[0])
    # stopped at the first iteration past the budget, not at the next log step (iteration 3)
    assert row["algo"] == "protonet" and row["iterations"] == 1
    assert 0.2 < row["test/acc"] <= 1.0 and "train.max_minutes=0.001" in row["command"]
    results = json.loads((tmp_path / "protonet_5w1s" / "results.json").read_text())
    assert results["test/episodes"] == 10 and results["iterations"] == 1
    table = (tmp_path / "table.md").read_text()
    assert f"| protonet | 5w1s | {100 * row['test/acc']:.1f} ± " in table


def test_a_failing_cell_is_reported_and_fails_the_script(omniglot_dir, tmp_path):
    done = _script(tmp_path, "--only", "anil", "--settings", "5w1s", "model.width=-1", shared=omniglot_dir.parents[1])
    assert done.returncode == 1
    assert "| anil | 5w1s | failed: " in (tmp_path / "table.md").read_text() and "model.width must be > 0" in done.stdout
