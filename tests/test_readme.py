"""The README: CI runs its set-up and test commands verbatim, and every command it lists runs."""

import re
import shlex

import pytest

from tests.conftest import REPO, run_cli


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
