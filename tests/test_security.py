"""A checkpoint never runs code when metarun opens it: mode=eval, load_learner and a resume refuse a file whose
pickle asks for code, in one line naming it, unless the user trusts it (trust_checkpoint=true, trusted=True).
Each crafted file would write a marker if its code ran; the marker must never appear. (The dataset pickles' own
tests are in tests/data/test_safe_pickle.py and the format tests.)"""

import os
import shutil

import pytest
import torch

from metarun import load_learner
from metarun.runner.checkpoint import UnsafeCheckpoint, load_checkpoint
from metarun.runner.train import run
from tests.conftest import REPO, TINY, compose_config, run_cli
from tests.synthetic import image_config


class Payload:
    """Unpickled, it would create the file ``marker``: the stand-in for any code a shared file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def with_payload(source, target, marker) -> None:
    """Copy the real checkpoint ``source`` to ``target`` with a payload in its last validation's results (still a
    full record)."""
    state = torch.load(source, weights_only=True)
    torch.save({**state, "val": {**state["val"], "notes": Payload(marker)}}, target)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny sinusoid run's directory."""
    run_dir = tmp_path_factory.mktemp("trained")
    run(compose_config(TINY, output_dir=run_dir))
    return run_dir


def test_the_payload_runs_code_under_a_plain_load(tmp_path, trained):
    # the check the other tests rely on: the crafted file does what an attacker's would
    marker = tmp_path / "marker"
    with_payload(trained / "checkpoints" / "best.pt", tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_mode_eval_refuses_a_checkpoint_that_asks_for_code_and_trust_checkpoint_loads_it(tmp_path, trained):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    with_payload(trained / "checkpoints" / "best.pt", evil, marker)
    refused = run_cli("mode=eval", f"checkpoint={evil}", *TINY, f"hydra.run.dir={tmp_path}/eval")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr == (f"metarun: error: checkpoint {evil} would run code when loaded (it asks the unpickler for "
                              "exec, which no metarun checkpoint holds), so it was not loaded; if you trust the file and "
                              "its author, pass trust_checkpoint=true (load_learner(..., trusted=True))\n")
    assert not marker.exists() and not (tmp_path / "eval").exists()
    trusted = run_cli("mode=eval", f"checkpoint={evil}", "trust_checkpoint=true", *TINY, f"hydra.run.dir={tmp_path}/ok")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists() and (tmp_path / "ok" / "results.json").is_file()


def test_train_init_from_refuses_a_checkpoint_that_asks_for_code_and_trust_checkpoint_loads_it(tmp_path, trained):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    with_payload(trained / "checkpoints" / "best.pt", evil, marker)
    refused = run_cli(*TINY, f"train.init_from={evil}", f"hydra.run.dir={tmp_path}/run")
    assert refused.returncode == 1 and refused.stderr.endswith(
        "so it was not loaded; if you trust the file and its author, pass trust_checkpoint=true "
        "(load_learner(..., trusted=True))\n"), refused.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()
    trusted = run_cli(*TINY, f"train.init_from={evil}", "trust_checkpoint=true", f"hydra.run.dir={tmp_path}/ok")
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists() and (tmp_path / "ok" / "results.json").is_file()


def test_load_learner_refuses_a_checkpoint_that_asks_for_code_unless_trusted(tmp_path):
    run(image_config(["algo=protonet", "train.iterations=1"], output_dir=tmp_path / "run"))
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    with_payload(tmp_path / "run" / "checkpoints" / "best.pt", evil, marker)
    with pytest.raises(UnsafeCheckpoint, match=f"checkpoint {evil} would run code when loaded .* exec"):
        load_learner(evil)
    assert not marker.exists()
    assert load_learner(evil, trusted=True).output_dim == 5 and marker.exists()


def test_a_resume_refuses_a_last_pt_that_asks_for_code_and_does_not_pass_over_it(tmp_path, trained):
    # a readable best.pt sits beside it: an unsafe last.pt is refused, never treated as corrupt and skipped
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(trained / "checkpoints", run_dir / "checkpoints")
    with_payload(trained / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt", marker)
    refused = run_cli(*TINY, f"hydra.run.dir={run_dir}")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"metarun: error: checkpoint {run_dir}/checkpoints/last.pt would run code")
    assert not marker.exists() and not (run_dir / "results.json").exists()
    resumed = run_cli(*TINY, "trust_checkpoint=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from iteration" in resumed.stdout and marker.exists()


def test_every_checkpoint_metarun_writes_loads_without_trust(trained):
    # what a run writes is tensors and plain containers only: the safe load reads it whole
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(trained / "checkpoints" / name)
        assert checkpoint.iteration > 0 and checkpoint.first_loss is not None


def test_a_checkpoint_that_is_a_fifo_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)  # opening it to read would block for ever
    done = run_cli("mode=eval", f"checkpoint={fifo}", *TINY, f"hydra.run.dir={tmp_path}/eval")
    assert done.returncode == 1 and done.stderr == (
        f"metarun: error: checkpoint {fifo} is not a regular file (a FIFO, socket or device); pass a run's "
        "checkpoints/best.pt or last.pt\n")
    with pytest.raises(Exception, match="not a regular file"):
        load_learner("/dev/null")


def test_an_ensemble_refuses_a_member_that_asks_for_code_and_trust_checkpoint_loads_it(tmp_path):
    run(image_config(["algo=protonet", "train.iterations=1"], output_dir=tmp_path / "run"))
    checkpoint, marker, evil = tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "marker", tmp_path / "evil.pt"
    with_payload(checkpoint, evil, marker)
    args = ["mode=eval", f"checkpoint={checkpoint}", f"eval.ensemble=[{evil}]", "logger.console=false"]
    refused = run_cli(*args, f"hydra.run.dir={tmp_path}/eval", cwd=REPO)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"metarun: error: checkpoint {evil} would run code when loaded"), refused.stderr
    assert not marker.exists() and not (tmp_path / "eval").exists()
    trusted = run_cli(*args, "trust_checkpoint=true", f"hydra.run.dir={tmp_path}/ok", cwd=REPO)
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists() and (tmp_path / "ok" / "results.json").is_file()
