"""The printed resume hint, pasted into a shell as it is, gives Hydra back the exact run directory."""

import shlex
import signal
import subprocess
import sys
import time

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from metarun.runner.checkpoint import load_checkpoint
from metarun.utils.resume_hint import pasteable, same_command
from tests.test_reliability import SLOW_RUN, steps

PATHS = ["/tmp/run", "run", "outputs/multirun/2026-12-06/01-02-03/0_algo=protonet,seed=1", "/tmp/two words/run",
         "it's", 'say "hi"', "/runs/$HOME/x", "/runs/${oc.env:HOME}/x", "back\\slash", "trailing\\", 'mixed\\"quote',
         "x\\${not_an_interpolation}", "a~b", "1", "true", "null", "*.pt", "a;b|c&d", "tab\there", " lead", "déjà/vu"]


def shell_argument(word: str) -> str:
    """What bash passes a command for ``word`` pasted after it."""
    return subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, text=True, check=True).stdout


def hydra_value(override: str):
    """The value Hydra's override parser reads from ``override``, as OmegaConf then resolves it."""
    value = OverridesParser.create().parse_overrides([override])[0].value()
    return OmegaConf.create({"value": value, "HOME": "resolved"}).value if isinstance(value, str) else value


@pytest.mark.parametrize("path", PATHS)
def test_the_override_pasted_into_a_shell_gives_hydra_the_exact_path(path):
    word = pasteable("hydra.run.dir", path)
    [override] = shlex.split(word)
    assert shell_argument(word) == override
    assert override.startswith("hydra.run.dir=") and hydra_value(override) == path


def test_simple_paths_stay_bare():
    dated = "outputs/runs/2026-12-06_01-02-03"
    assert pasteable("hydra.run.dir", dated) == f"hydra.run.dir={dated}"
    assert pasteable("hydra.run.dir", "/tmp/run") == "hydra.run.dir=/tmp/run"
    assert pasteable("hydra.run.dir", "0_algo=protonet,seed=1") == """'hydra.run.dir="0_algo=protonet,seed=1"'"""


def test_outside_a_sweep_the_hint_names_the_run_directory():
    assert same_command("/tmp/a,b") == """the same command with 'hydra.run.dir="/tmp/a,b"'"""


def test_for_a_sweep_the_hint_names_the_sweep_directory():
    # rerun with it, the sweep's jobs land in their directories again and resume there
    assert same_command(sweep_dir="multirun/a b") == """the same command with 'hydra.sweep.dir="multirun/a b"'"""


@pytest.mark.slow
def test_a_run_in_a_directory_named_with_equals_and_commas_resumes_from_the_hint_run_through_the_shell(tmp_path):
    run_dir = tmp_path / "0_algo=maml,seed=1 x"
    command = [sys.executable, "-m", "metarun.runner.cli", *SLOW_RUN]
    metrics = run_dir / "metrics.jsonl"
    first = start_in_shell(f"{shlex.join(command)} {pasteable('hydra.run.dir', run_dir)}",
                           lambda: metrics.is_file() and steps(run_dir))
    first.send_signal(signal.SIGINT)
    out, err = first.communicate()
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt").iteration
    assert first.returncode == 1 and err.startswith(f"metarun: error: interrupted (Ctrl-C) after iteration {stopped}; ")
    hint = err.split("to continue, run the same command with ")[1].split(" (resume=auto")[0]
    assert hint == pasteable("hydra.run.dir", run_dir) and err.count("\n") == 1
    # the hint pasted as printed: the run continues in the same directory, from its checkpoint
    kept = len(steps(run_dir))
    resumed = start_in_shell(f"{shlex.join(command)} {hint}", lambda: len(steps(run_dir)) > kept)
    resumed.send_signal(signal.SIGINT)
    out, err = resumed.communicate()
    assert resumed.returncode == 1 and f"resumed from iteration {stopped} of " in out, err
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt").iteration > stopped
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]


def start_in_shell(command: str, ready) -> subprocess.Popen:
    """bash running ``command`` in a session of its own, whose process group stands for a terminal's; returned
    once ``ready()`` holds (no time limit: a slow machine makes a test slow, never failed)."""
    # exec: bash becomes metarun; SIGINT as on a terminal, not ignored as in a background job
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not ready():
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    return process
