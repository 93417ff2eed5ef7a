"""The README: CI runs its set-up and test commands verbatim, and every command it lists runs."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.data.imagetrees import write_tree, zip_tree


def _section(title: str) -> str:
    return (REPO / "README.md").read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _fenced_commands(section: str) -> list:
    body = _section(section)
    return [line for block in re.findall(r"```\n(.*?)```", body, re.S) for line in block.splitlines() if line]


def test_ci_runs_the_readme_set_up_and_test_commands_verbatim():
    install, test = _fenced_commands("Set up")[:2]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert install in ci and test in ci
    assert "pip install -e \".[cpu,dev]\"" in install and install.endswith("&& metarun")
    assert "pytest" in test


SMALL = ["train.iterations=20", "train.log_every=10", "train.val_every=10", "train.checkpoint_every=10",
         "eval.episodes=10", "eval.val_episodes=10", "logger.console=false"]


def _table_commands(section: str) -> list:
    return re.findall(r"^\| `(metarun[^`]*)` \|", _section(section), re.M)


@pytest.mark.parametrize("command", _table_commands("Running"))
def test_every_readme_command_runs(command, tmp_path):
    args = shlex.split(command)[1:]
    informational = "--help" in args or "--cfg" in args
    extra = [] if informational else [*SMALL, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    out = run_cli(*args, *extra)
    assert out.returncode == 0, out.stderr
    if "-m" in args:
        assert len(list((tmp_path / "sweep").glob("*/results.json"))) == 6
    elif not informational:
        assert (tmp_path / "run" / "results.json").is_file()


def _dataset_commands() -> dict:
    commands = [shlex.split(c)[1:] for c in _fenced_commands("Datasets")]
    return {next(a[len("dataset="):] for a in args if a.startswith("dataset=")): args for args in commands}


def test_readme_omniglot_command_runs_on_the_real_subsets(tmp_path):
    args = _dataset_commands()["omniglot"]
    if not (REPO / ".." / "shared" / "data" / "omniglot").is_dir():
        pytest.skip("the real Omniglot subsets are not in ../shared/data/omniglot")
    out = run_cli(*args, *SMALL, "model.width=16", "dataset.queries=2", "eval.queries=2", "hardware.num_threads=1",
                  f"dataset.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "omniglot"


def test_readme_challenge_command_runs_on_the_real_subsets(tmp_path):
    (command,) = _fenced_commands("Omniglot's one-shot challenge (Lake et al., 2015)")
    if not (REPO / ".." / "shared" / "data" / "omniglot").is_dir():
        pytest.skip("the real Omniglot subsets are not in ../shared/data/omniglot")
    out = run_cli(*shlex.split(command)[1:], *SMALL, "train.max_minutes=null", "model.width=16", "dataset.queries=1",
                  "hardware.num_threads=1", f"dataset.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", cwd=REPO)
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == "omniglot" and results["test/episodes"] == 10


def test_readme_imagefolder_command_runs_on_folders_it_names(tmp_path):
    args = _dataset_commands()["imagefolder"]
    paths = [a.split("=[", 1)[1].rstrip("]") for a in args if a.split("=")[0] in ("dataset.train", "dataset.val", "dataset.test")]
    for path in paths:
        folder = tmp_path / Path(path).stem
        write_tree(folder, {f"class{i}": 4 for i in range(5)}, size=12)
        if path.endswith(".zip"):
            zip_tree(folder, tmp_path / path)
    out = run_cli(*args, *SMALL, "dataset.shots=1", "dataset.queries=2", "model.width=8", "hardware.num_threads=1",
                  f"paths.data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "imagefolder"


def test_readme_quick_runs_and_their_paired_comparison_run_on_the_real_subsets(tmp_path):
    section = _section("A quick run and paired comparisons")  # a ### section: its first fenced block
    *runs, compare = [shlex.split(line) for line in re.findall(r"```\n(.*?)```", section, re.S)[0].splitlines()]
    if not (REPO / ".." / "shared" / "data" / "omniglot").is_dir():
        pytest.skip("the real Omniglot subsets are not in ../shared/data/omniglot")
    for args in runs:
        args = [arg.replace("outputs/quick", str(tmp_path)) for arg in args[1:]]
        out = run_cli(*args, *SMALL, "model.width=16", "dataset.queries=2", "eval.queries=2", "hardware.num_threads=1",
                      f"dataset.cache_dir={tmp_path}/cache", cwd=REPO)
        assert out.returncode == 0, out.stderr
    assert compare[:2] == ["metarun-report", "--paired"]
    out = subprocess.run([sys.executable, "-m", "metarun.report.cli", "--paired", "--out", str(tmp_path),
                          *(arg.replace("outputs/quick", str(tmp_path)) for arg in compare[2:])],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "maml" in out.stdout and "protonet" in out.stdout and (tmp_path / "paired.csv").is_file()
