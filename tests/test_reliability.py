"""Nothing lost, nothing silent: bad files, full disks, Ctrl-C, a second process and resumes, each reproduced."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from metarun import load_learner
from metarun.logging.jsonl import JsonlWriter
from metarun.runner import checkpoint
from metarun.runner.checkpoint import load_checkpoint, save_checkpoint
from metarun.runner.run_dir import RunDirectory
from metarun.runner.train import run
from metarun.utils import errors
from metarun.utils.errors import RunError
from tests.conftest import TINY, compose_config, run_cli, tiny_checkpoint

SLOW_RUN = ["train.iterations=100000", "train.log_every=5", "train.checkpoint_every=100000", "train.val_every=100000",
            "train.meta_batch_size=4", "eval.episodes=10", "eval.val_episodes=10", "eval.batch_size=10",
            "logger.console=false", "hardware.num_threads=1", "hardware.task_parallel=loop"]


def steps(run_dir) -> list:
    """The steps logged in ``run_dir``'s metrics.jsonl, in file order."""
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def start_run(run_dir, *overrides, logged: int = 1) -> subprocess.Popen:
    """A long sinusoid run in ``run_dir``, returned once it has logged ``logged`` lines of metrics."""
    # Ctrl-C as on a terminal: a test run in the background (CI's `cmd &`) would pass on SIGINT ignored, which
    # Python, and so metarun, then leave ignored
    process = subprocess.Popen([sys.executable, "-m", "metarun.runner.cli", *SLOW_RUN, *overrides, f"hydra.run.dir={run_dir}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= logged):
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    return process


def test_ctrl_c_checkpoints_the_iteration_says_how_to_continue_and_a_rerun_logs_each_step_once(tmp_path):
    run_dir = tmp_path / "run"
    process = start_run(run_dir)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate()
    assert process.returncode == 1 and err.count("\n") == 1, err
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt").iteration
    assert err.startswith(f"metarun: error: interrupted (Ctrl-C) after iteration {stopped}; ")
    assert f"hydra.run.dir={run_dir}" in err
    # metrics logged after the checkpoint are dropped on resume and logged again: each step appears once
    (run_dir / "metrics.jsonl").open("a").write(json.dumps({"step": stopped + 5, "train/loss": 1.0}) + "\n")
    # the same command resumes; signalled once it logs past the file it found (metrics up to the checkpoint are
    # kept, the line after it dropped), so that the signal reaches the training loop, not the start-up
    process = start_run(run_dir, logged=len(steps(run_dir)) + 1)
    process.send_signal(signal.SIGINT)
    process.communicate()
    logged = steps(run_dir)
    assert len(logged) == len(set(logged)) and logged == sorted(logged) and max(logged) > stopped + 5
    assert all(step % 5 == 0 for step in logged)  # the stray line is gone; train.log_every=5 logged the rest


def test_ctrl_c_during_the_meta_test_is_one_line_with_the_run_directory(tmp_path):
    # 10 iterations, then a meta-test of a million episodes: the signal arrives during the test
    process = start_run(tmp_path / "run", "train.iterations=10", "eval.episodes=1000000", logged=2)
    while not (tmp_path / "run" / "checkpoints" / "last.pt").is_file():
        time.sleep(0.1)
    time.sleep(1.0)  # past the few lines between the last checkpoint and the end of the training loop
    process.send_signal(signal.SIGINT)
    out, err = process.communicate()
    assert process.returncode == 130 and err == (f"metarun: error: interrupted (Ctrl-C); run the same command with "
                                                 f"hydra.run.dir={tmp_path / 'run'} to continue from its last "
                                                 "checkpoint (resume=auto)\n")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").iteration == 10


def test_a_second_ctrl_c_quits_at_once():
    from metarun.runner.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGINT)  # Python's KeyboardInterrupt, or ignored in a background job
    with pytest.raises(KeyboardInterrupt), PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested  # the first only asks for a checkpoint at the end of the iteration
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_process_in_the_run_directory_is_refused_naming_the_holder(tmp_path):
    with RunDirectory(tmp_path / "run"):
        out = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"metarun: error: {tmp_path / 'run'} is in use by pid {os.getpid()} on ")
    assert not (tmp_path / "run" / ".hydra").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_killed_process_lock_is_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("pid 4242 on elsewhere")  # left by a process that was killed
    out = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr
    assert "took over the lock of" in out.stdout and "left by pid 4242 on elsewhere" in out.stdout
    assert (tmp_path / "run" / "results.json").is_file() and (tmp_path / "run" / ".lock").read_text() == ""


def test_a_refused_resume_leaves_the_run_record_as_it_was(tmp_path):
    first = run_cli(*TINY, f"hydra.run.dir={tmp_path}")
    assert first.returncode == 0, first.stderr
    record = {name: (tmp_path / ".hydra" / name).read_text() for name in ("config.yaml", "overrides.yaml", "hydra.yaml")}
    refused = run_cli(*TINY, "seed=1", f"hydra.run.dir={tmp_path}")
    assert refused.returncode == 1 and "resume=auto but seed (0 in the checkpoint, 1 now) differ" in refused.stderr
    assert "see .hydra/overrides.yaml" in refused.stderr
    assert {name: (tmp_path / ".hydra" / name).read_text() for name in record} == record
    assert "seed=1" not in record["overrides.yaml"]


BAD_FILES = {
    "truncated": lambda good: good.read_bytes()[: len(good.read_bytes()) // 2],
    "text": lambda good: b"these are my notes, not a checkpoint\n",
    "foreign": lambda good: None,  # a torch file of someone else's: a bare state dict
}


def write_bad(kind: str, good, path):
    """A checkpoint-looking file of ``kind`` at ``path``, made from the good checkpoint ``good``."""
    content = BAD_FILES[kind](good)
    if content is None:
        torch.save({"weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny sinusoid run's directory."""
    run_dir = tmp_path_factory.mktemp("trained")
    run(compose_config(TINY, output_dir=run_dir))
    return run_dir


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_checkpoint_files_name_the_file_and_the_fix(kind, trained, tmp_path):
    bad = write_bad(kind, trained / "checkpoints" / "best.pt", tmp_path / "best.pt")
    out = run_cli("mode=eval", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    expected = "is a torch file but not a metarun checkpoint" if kind == "foreign" else "is truncated or not a torch file"
    assert str(bad) in out.stderr and expected in out.stderr and "pass a run's checkpoints/best.pt" in out.stderr
    with pytest.raises(RunError, match=expected):
        load_learner(bad)


def test_unreadable_last_checkpoint_resumes_from_best_or_says_what_to_do(trained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(compose_config(TINY, output_dir=run_dir))
    results = json.loads((run_dir / "results.json").read_text())
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    write_bad("truncated", last, last)
    capsys.readouterr()
    run(compose_config(TINY, output_dir=run_dir))
    iteration = load_checkpoint(best).iteration
    assert (f"warning: {last} is unreadable (truncated or corrupt); resuming from {best} (iteration {iteration})"
            in capsys.readouterr().out)
    assert json.loads((run_dir / "results.json").read_text())["test/mse"] == results["test/mse"]
    write_bad("text", last, last)
    write_bad("text", last, best)
    with pytest.raises(RunError, match=rf"^{last} is unreadable \(truncated or corrupt\) and no readable best.pt is "
                                       "kept beside it; start over with resume=false or in a new hydra.run.dir"):
        run(compose_config(TINY, output_dir=run_dir))
    run(compose_config([*TINY, "resume=false"], output_dir=run_dir))  # the fix the message gives works


def test_a_disk_filling_mid_run_names_the_cause_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_save, saves = torch.save, []

    def disk_fills_on_the_second_save(obj, path):
        saves.append(path)
        real_save(obj, path if len(saves) < 2 else "/dev/full")  # /dev/full: every write fails with ENOSPC

    budget = [*TINY, "train.val_every=20"]  # saves: last.pt at 10, then best.pt at 20
    Usage = namedtuple("Usage", "total used free")
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.torch, "save", disk_fills_on_the_second_save)
        patch.setattr(errors.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
        with pytest.raises(RunError, match=r"^cannot write .*best.pt: no space left on the device of .*checkpoints "
                                           rf"\(1.0 kB free, about [0-9.]+ kB needed\); free some space and run the same "
                                           rf"command with hydra.run.dir={tmp_path} to continue$"):
            run(compose_config(budget, output_dir=tmp_path))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").iteration == 10
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]  # no temporary file left
    run(compose_config(budget, output_dir=tmp_path))  # space freed: the same command continues and finishes
    assert json.loads((tmp_path / "results.json").read_text())["iterations"] == 20
    assert steps(tmp_path) == [10, 20]


def test_a_read_only_folder_is_named_and_its_cleanup_never_hides_the_cause(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint.torch, "save", refused)
    monkeypatch.setattr("pathlib.Path.unlink", refused)  # the temporary file's removal is refused too
    with pytest.raises(RunError, match=r"^cannot write .*last.pt: .*c is read-only for this process; make it writable "
                                       "or set hydra.run.dir elsewhere$"):
        save_checkpoint(tmp_path / "c" / "last.pt", tiny_checkpoint())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device whose every write fails with ENOSPC")
def test_a_metrics_line_that_finds_the_disk_full_names_the_file_and_the_cause():
    writer = JsonlWriter(Path("/dev/full"))
    with pytest.raises(RunError, match=r"^cannot write /dev/full: no space left on the device of /dev \(.* free, about "
                                       r"\d+ bytes needed\); free some space and run the same command with hydra.run.dir=/dev "
                                       "to continue$"):
        writer.log(10, {"train/loss": 1.0})
    writer.finish(None)  # closing after the failed write raises nothing that would hide it


def test_metrics_after_the_resumed_iteration_and_cut_lines_are_dropped(tmp_path):
    lines = [json.dumps({"step": step, "train/loss": 1.0}) for step in (10, 20, 30)] + ['{"step": 40, "tra']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    writer = JsonlWriter(tmp_path / "metrics.jsonl", start=20)
    writer.log(30, {"train/loss": 0.5})
    writer.finish(None)
    assert steps(tmp_path) == [10, 20, 30]


def test_a_sweep_runs_its_good_jobs_and_names_the_bad_one(tmp_path):
    out = run_cli("-m", *TINY, "algo.inner_lr=-1,0.01", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 1
    # the refused job leaves no directory (nothing ran); the good one its results
    (job,) = (p for p in tmp_path.iterdir() if p.is_dir())
    assert job.name == "1_algo.inner_lr=0.01" and (job / "results.json").is_file()
    assert "metarun: error: job #0 (" in out.stderr and "algo.inner_lr must be > 0, got -1.0" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("metarun: error: job #0 of the sweep failed (named above); the results "
                                                   "of the jobs that ran are in their run directories")
    # a value that does not compose stops the sweep before its first job, and says so
    out = run_cli("-m", *TINY, "algo.inner_steps=abc,1", f"hydra.sweep.dir={tmp_path / 'other'}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.strip().endswith("; no job of the sweep ran")
    assert not list((tmp_path / "other").glob("*/results.json"))
