"""scripts/gpu_check.sh: the docs' dry run (docs/speed.md) writes the report, the report says what failed, and bad
arguments are named with their fix."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script
from tests.data.conftest import omniglot_dir  # noqa: F401  (the real subsets, skipped where absent)

gpu_report = load_script(REPO / "scripts" / "gpu_report.py", "gpu_report")


def _readme_dry_run() -> list:
    """The dry-run command line of docs/speed.md, split like a shell would."""
    (line,) = [line for line in (REPO / "docs" / "speed.md").read_text().splitlines()
               if line.startswith("scripts/gpu_check.sh") and "--quick" in line]
    return shlex.split(line)


def _check(*args) -> subprocess.CompletedProcess:
    """``bash scripts/gpu_check.sh ARGS`` from the repository root, with this interpreter first on PATH as python3."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.usefixtures("omniglot_dir")
def test_the_readme_dry_run_writes_the_report(tmp_path):
    command = _readme_dry_run()  # run from the repository root as typed: its --data is the subsets' folder
    command[command.index("--out") + 1] = str(tmp_path / "check")
    if not (REPO / command[command.index("--data") + 1]).is_dir():
        pytest.skip(f"the dry run reads the subsets from {command[command.index('--data') + 1]}, not here")
    done = _check(*command)
    out = tmp_path / "check"
    report = (out / "report.md").read_text()
    phases = {line["phase"]: line for line in map(json.loads, (out / "phases.jsonl").read_text().splitlines())}
    assert list(phases) == ["setup", "tests", "bench", "maml-fp32", "maml-bf16", "protonet"]
    assert done.returncode == (1 if any(phase["exit"] for phase in phases.values()) else 0), done.stderr
    assert done.stdout.endswith(report)
    for section in ("## Phases", "## CUDA tests", "## Benchmark", "## Training on the Omniglot subsets", "## Failures"):
        assert section in report
    assert "checked with `--device cpu`, budgets quick" in report.lower()
    # no GPU: every CUDA test is collected and skips
    assert re.search(r"`\d+ skipped, \d+ deselected in [\d.]+s`", report)
    if phases["bench"]["exit"]:
        assert "### bench: **failed**" in report
    else:
        assert "| setting |" in report and len((out / "bench.jsonl").read_text().splitlines()) > 0
    for name, label in gpu_report.RUNS.items():
        results = json.loads((out / "runs" / name / "results.json").read_text())
        assert results["test/episodes"] == 10 and results["iterations"] == 10
        assert (f"| {label} | {100 * results['test/acc']:.2f} ± {100 * results['test/acc_ci95']:.2f} | 10 | 10 | "
                in report)
    assert "bf16 − fp32: **" in report and "same seed, both 10 iterations" in report


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _results(acc: float, iterations: int) -> str:
    return json.dumps({"test/acc": acc, "test/acc_ci95": 0.006, "test/episodes": 600, "iterations": iterations,
                       "wall_s": 41.6})


def test_the_report_says_what_failed_and_compares_bf16_with_fp32(tmp_path):
    gpu_report.main([str(tmp_path), "--start", "--device", "cuda"])
    phases = [("setup", 0, 9, 0), ("tests", 1, 40, 150), ("bench", 124, 210, 210), ("maml-fp32", 0, 55, 100),
              ("maml-bf16", 0, 60, 100)]
    _write(tmp_path / "phases.jsonl", "".join(json.dumps(dict(zip(("phase", "exit", "seconds", "limit"), p))) + "\n"
                                              for p in phases))
    _write(tmp_path / "tests.log", "..F.\nFAILED tests/cuda/test_device.py::test_x - AssertionError: 3 > 4\n"
                                   "1 failed, 15 passed, 2 skipped in 40.10s\n")
    _write(tmp_path / "bench.log", '{"impl": "metarun-vmap", "tasks_per_s": 160.0}\nstill measuring\n')
    _write(tmp_path / "runs" / "maml-fp32" / "results.json", _results(0.952, 1000))
    _write(tmp_path / "runs" / "maml-bf16" / "results.json", _results(0.955, 880))
    gpu_report.main([str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "| tests | **failed** (exit 1) | 40 (150) |" in report and "| protonet | not run | |" in report
    assert "`1 failed, 15 passed, 2 skipped in 40.10s`" in report
    assert "- FAILED tests/cuda/test_device.py::test_x - AssertionError: 3 > 4" in report
    assert "| bench | **timed out** at 210 s | 210 (210) |" in report and "no table in bench.log" in report
    assert "### bench: **timed out** at 210 s\n\n```\n{\"impl\": \"metarun-vmap\"" in report
    assert "| MAML, fp32 | 95.20 ± 0.60 | 600 | 1000 | 42 |" in report
    assert "bf16 − fp32: **+0.30 points**, within the target of ±0.5" in report
    assert "**unequal budgets**: fp32 1000, bf16 880 iterations" in report


def test_the_report_holds_each_seed_of_the_challenge_and_their_ensemble(tmp_path):
    gpu_report.main([str(tmp_path), "--start", "--device", "cuda", "--phases", "challenge"])
    phases = [("setup", 0, 9, 0), ("challenge", 0, 300, 480), ("challenge-ensemble", 124, 480, 480)]
    _write(tmp_path / "phases.jsonl", "".join(json.dumps(dict(zip(("phase", "exit", "seconds", "limit"), p))) + "\n"
                                              for p in phases))
    for seed, acc in ((10, 0.861), (0, 0.85), (1, 0.872)):
        _write(tmp_path / "runs" / "challenge" / f"seed{seed}" / "results.json", _results(acc, 16000))
    ensemble = {"test/acc": 0.901, "test/acc_ci95": 0.006, "test/episodes": 1000, "checkpoint/iteration": 16000}
    _write(tmp_path / "runs" / "challenge-ensemble" / "results.json", json.dumps(ensemble))
    gpu_report.main([str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "| challenge | ok | 300 (480) |\n| challenge-ensemble | **timed out** at 480 s | 480 (480) |" in report
    assert ("| seed 0 | 85.00 ± 0.60 | 600 | 16000 | 42 |\n| seed 1 | 87.20 ± 0.60 | 600 | 16000 | 42 |\n"
            "| seed 10 | 86.10 ± 0.60 | 600 | 16000 | 42 |\n| **ensemble of the 3** | 90.10 ± 0.60 | 1000 |  |  |"
            ) in report
    assert "Phases: challenge ok in 300 s, challenge-ensemble **timed out** at 480 s in 480 s." in report
    assert "## Training on the Omniglot subsets\n\n" in report and "not run" in report


def test_the_benchmark_section_holds_its_table_and_the_lines_of_its_extras(tmp_path):
    table = "| setting | impl |\n|---|---|\n| maml-omniglot-5w1s | plain |"
    extras = ["eval: 600 test episodes of maml-omniglot-5w1s (...) in 1.2 s: 500 episodes/s", "gpu-busy: CUDA only"]
    _write(tmp_path / "bench.log", "\n".join(['{"impl": "plain"}', table, *extras, ""]))
    _write(tmp_path / "bench.jsonl", '{"impl": "plain"}\n{"kind": "eval"}\n')
    assert gpu_report.bench_section(tmp_path / "bench.log", tmp_path / "bench.jsonl") == \
        f"{table}\n\n- {extras[0]}\n- {extras[1]}\n\n2 JSON lines in bench.jsonl"


def test_a_missing_subset_is_named_with_the_option_that_fixes_it(tmp_path):
    done = _check("scripts/gpu_check.sh", "--device", "cpu", "--out", str(tmp_path / "out"), "--data", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == (f"gpu_check.sh: {tmp_path}/images_background_small1.zip does not exist; pass --data DIR, "
                           "the folder of the Omniglot subsets\n")
