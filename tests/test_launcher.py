"""hydra/launcher=local gives each job a GPU of its own, tells it how many jobs it starts at once, and stops its
jobs with the sweep. Without a GPU here, the sweep process is shown fake ones (the devices and batches a job is
given are what is checked, not where it trains); tests/cuda/test_sweep_gpus.py runs a sweep on a real one."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback

from metarun.config import store
from metarun.runner.checkpoint import load_checkpoint
from metarun.utils.errors import StartRefused
from metarun.utils.hardware import PARALLEL_JOBS
from metarun.utils.resume_hint import pasteable
from tests.conftest import REPO, TINY, compose_config, run_cli
from tests.test_reliability import SLOW_RUN
from tests.test_resume_hint import start_in_shell

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the sweep extra is not installed")
from submitit.local import local  # noqa: E402  (needs the sweep extra)

from hydra_plugins.metarun_launcher import _parallel_local as launcher  # noqa: E402
from hydra_plugins.metarun_launcher._parallel_local import JobProcesses, StopSweep  # noqa: E402

WAIT_S = 300  # for a process to start or end on a busy machine: a slow machine makes a test slow, never failed


@pytest.mark.parametrize("gpus, overrides, jobs, batches", [
    ([], [], 3, [(3, 0)]),  # no GPU: every job at once
    (["0", "1"], ["hardware.jobs_per_gpu=2"], 5, [(4, 0), (1, 4)]),
    (["0", "1"], ["hardware.jobs_per_gpu=4"], 3, [(3, 0)]),  # fewer jobs than the GPUs hold: one batch
    (["0"], ["hardware=cpu"], 3, [(3, 0)]),  # the jobs leave the GPU alone
    (["0"], [], 3, [(1, 0), (1, 1), (1, 2)]),
], ids=["no-gpu", "2-gpus-2-per-gpu", "more-room-than-jobs", "hardware=cpu", "1-gpu"])
def test_launch_starts_batches_the_gpus_hold_each_job_knowing_how_many_run_beside_it(monkeypatch, gpus, overrides,
                                                                                     jobs, batches):
    monkeypatch.setenv(PARALLEL_JOBS, "1")  # restored after the test
    monkeypatch.setattr(launcher, "visible_gpus", lambda: gpus)
    started = []

    def start(self, job_overrides, initial_job_idx):
        started.append((len(job_overrides), initial_job_idx, os.environ[PARALLEL_JOBS]))
        return list(job_overrides)

    monkeypatch.setattr(launcher.LocalLauncher, "launch", start)  # submitit's own launch, which starts the jobs
    seeds = [[f"seed={seed}"] for seed in range(jobs)]
    parallel = launcher.ParallelLocalLauncher()
    parallel.config = compose_config(overrides)
    assert parallel.launch(seeds, initial_job_idx=0) == seeds
    assert started == [(size, first, str(size)) for size, first in batches]


@pytest.mark.parametrize("listed, count, gpus", [
    (None, 2, ["0", "1"]), ("5,7", 2, ["5", "7"]), ("", 0, []), (None, 0, []),
    ("1,9", 1, ["1"]),  # torch stops at the first device that does not exist
    ("GPU-8f6a, GPU-31c2", 2, ["GPU-8f6a", "GPU-31c2"]),  # CUDA's names by UUID
])
def test_visible_gpus_are_the_users_cuda_visible_devices_else_every_gpu_torch_counts(monkeypatch, listed, count,
                                                                                    gpus):
    if listed is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert launcher.visible_gpus() == gpus


@pytest.mark.parametrize("gpus, devices", [(["5", "7"], ["5", "7", "5"]), ([], ["", "", ""])],
                         ids=["gpus", "none: submitit's"])
def test_each_controller_starts_on_the_next_gpu_in_turn(monkeypatch, gpus, devices):
    monkeypatch.setattr(local, "start_controller", lambda **kwargs: kwargs["cuda_devices"])
    jobs = JobProcesses(grace_s=60, gpus=gpus)
    with jobs.stopped_with_sweep():
        started = [local.start_controller(folder="unused", cuda_devices="") for _ in range(3)]
    assert started == jobs.started == devices


def test_a_device_past_cuda_0_is_refused_on_gpus_as_each_job_sees_one(monkeypatch):
    monkeypatch.setattr(launcher, "visible_gpus", lambda: ["0", "1"])
    with pytest.raises(StartRefused, match=r"^hardware\.device=cuda:1, but each job of hydra/launcher=local sees "
                                           r"one GPU, its own, as cuda:0; .*; no job of the sweep ran$"):
        launcher.sweep_gpus(compose_config(["hardware.device=cuda:1"]).hardware)
    assert launcher.sweep_gpus(compose_config(["hardware.device=cuda:0"]).hardware) == ["0", "1"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_jobs_per_gpu_is_one_line_naming_the_key_and_no_job_runs(tmp_path, value):
    sweep = tmp_path / "sweep"
    out = run_cli("-m", "hydra/launcher=local", *TINY, f"hardware.jobs_per_gpu={value}", "seed=0,1",
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 1
    assert re.fullmatch(r"metarun: error: .*hardware\.jobs_per_gpu.*; no job of the sweep ran\n", out.stderr)
    assert not list(sweep.glob("[0-9]*"))  # no job's run directory


class RecordJob(Callback):
    """Hydra callback run in each job's process (``+hydra.callbacks.record``): writes job.json into the job's run
    directory with the GPU the job was shown, how many jobs it was told run beside it, the jobs of the sweep that
    had ended (written their job.json) when it started, and the device it trained on."""

    def on_job_start(self, config, **kwargs) -> None:
        """Note what the job was given, before it runs."""
        ended = [json.loads(path.read_text())["num"] for path in Path(config.hydra.sweep.dir).glob("*/job.json")]
        self.seen = {"num": config.hydra.job.num, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "jobs": os.environ.get(PARALLEL_JOBS), "ended_before": sorted(ended)}

    def on_job_end(self, config, job_return, **kwargs) -> None:
        """Write the note with the device the job trained on, whole at once: a job starting meanwhile reads it."""
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_initialized() else "cpu"
        path = Path(config.hydra.runtime.output_dir, "job.json")
        path.with_suffix(".part").write_text(json.dumps({**self.seen, "device": device}))
        path.with_suffix(".part").replace(path)


def gpu_sweep(sweep: Path, seeds: str, *overrides, gpus=None, listed=None) -> list:
    """The job.json of each job of a tiny local sweep over ``seeds`` in ``sweep``, in job order: the sweep process's
    torch counts ``gpus`` GPUs (None: the real ones) and its ``CUDA_VISIBLE_DEVICES`` is ``listed`` (None: unset)."""
    fake = "" if gpus is None else f"torch.cuda.device_count = lambda: {gpus}; "
    env = {name: value for name, value in os.environ.items() if name != "CUDA_VISIBLE_DEVICES"}
    env.update({} if listed is None else {"CUDA_VISIBLE_DEVICES": listed})
    out = subprocess.run([sys.executable, "-c", f"import torch; {fake}from metarun.runner.cli import main; main()",
                          "-m", "hydra/launcher=local", *TINY, f"seed={seeds}", *overrides,
                          "+hydra.callbacks.record._target_=tests.test_launcher.RecordJob",
                          f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return sorted((json.loads(path.read_text()) for path in sweep.glob("*/job.json")), key=lambda job: job["num"])


def assert_batches(jobs: list, batches: list) -> None:
    """``jobs`` (job.json records, in job order) ran in ``batches`` (lists of job numbers): each job told its batch's
    size, and started once every job of the batches before had ended and before any of the batches after had.
    Whether a batch's jobs overlapped in time is left alone: on a busy machine one may end before the next starts."""
    for index, batch in enumerate(batches):
        before = {number for earlier in batches[:index] for number in earlier}
        for number in batch:
            assert jobs[number]["jobs"] == str(len(batch)), jobs
            assert before <= set(jobs[number]["ended_before"]) <= before | set(batch), jobs


def test_each_job_of_a_local_sweep_sees_its_own_gpu_in_its_batch(tmp_path):
    # the user's CUDA_VISIBLE_DEVICES lists GPUs 5 and 7: one job on each at a time (the batching's other cases are
    # test_launch_starts_batches_..., a real GPU's is tests/cuda/test_sweep_gpus.py)
    jobs = gpu_sweep(tmp_path / "sweep", "0,1,2,3", gpus=2, listed="5,7")
    assert [job["gpu"] for job in jobs] == ["5", "7", "5", "7"]
    assert_batches(jobs, [[0, 1], [2, 3]])


def test_hydra_finds_the_parallel_launcher_and_hydra_launcher_local_names_it():
    ours = "hydra_plugins.metarun_launcher._parallel_local.ParallelLocalLauncher"
    assert Plugins.instance().class_name_to_class[ours] is launcher.ParallelLocalLauncher  # Hydra's own scan
    store.register()
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=local"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == ours


def test_a_controller_starts_ignoring_ctrl_c_and_a_signal_meanwhile_stops_the_sweep_once_it_is_recorded(monkeypatch):
    seen = {}

    def start(**kwargs):  # submitit's start_controller: the stop signal arrives while it starts the process
        seen.update({sig: signal.getsignal(sig) for sig in launcher.STOP_SIGNALS})
        os.kill(os.getpid(), signal.SIGTERM)
        return "controller"

    monkeypatch.setattr(local, "start_controller", start)
    before = {sig: signal.getsignal(sig) for sig in launcher.STOP_SIGNALS}
    jobs = JobProcesses(grace_s=60)
    with pytest.raises(StopSweep), jobs.stopped_with_sweep():
        local.start_controller(folder="unused")
    assert jobs.started == ["controller"] and jobs.received == signal.SIGTERM
    assert seen[signal.SIGINT] is seen[signal.SIGHUP] is signal.SIG_IGN  # inherited by the controller and its task
    assert {sig: signal.getsignal(sig) for sig in launcher.STOP_SIGNALS} == before and local.start_controller is start


def test_a_second_signal_means_kill_now():
    jobs = JobProcesses(grace_s=60)
    with pytest.raises(StopSweep):
        jobs._on_signal(signal.SIGINT, None)
    jobs._on_signal(signal.SIGINT, None)  # no second StopSweep while the jobs stop
    assert jobs.received == signal.SIGINT and jobs.hurry


def python(code: str) -> tuple:
    """A Python process running ``code``, and the first line it prints, once printed."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline()


def test_stop_passes_sigterm_on_and_kills_a_job_still_running_after_the_grace():
    stops, _ = python("import time; print('ready', flush=True); time.sleep(300)")
    stuck, _ = python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                      "time.sleep(300)")
    jobs = JobProcesses(grace_s=1.0)
    jobs.started = [stops, stuck]
    jobs.stop()
    assert (stops.returncode, stuck.returncode) == (-signal.SIGTERM, -signal.SIGKILL)
    assert jobs.killed == {stuck.pid}


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(condition, what: str) -> None:
    """Poll ``condition`` until it holds (WAIT_S at most, then fail naming ``what``)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_job_dies_with_its_controller():
    # the controller stands in as a Python process that starts the job and passes on its pid
    job = ("import os, threading, time; from hydra_plugins.metarun_launcher._parallel_local import die_with; "
           "threading.Thread(target=die_with, args=(os.getppid(),), daemon=True).start(); "
           "print(os.getpid(), flush=True); time.sleep(300)")
    controller, pid = python(f"import subprocess, sys, time; job = subprocess.Popen([sys.executable, '-c', {job!r}], "
                             "stdout=subprocess.PIPE, text=True); print(job.stdout.readline(), end='', flush=True); "
                             "time.sleep(300)")
    pid = int(pid)
    assert alive(pid)
    controller.kill()
    controller.wait()
    wait_for(lambda: not alive(pid), f"job {pid} still runs after its controller was killed")


JOB_LINE = re.compile(r"metarun: error: job #(\d) \((.*)\): (.*)")
PREEMPTED = re.compile(r"preempted by SIGTERM after iteration (\d+); (.*) holds it; to continue, run the same command "
                       r"with (.*) \(resume=auto, the default, picks the checkpoint up\)")


def sweep_command(sweep: Path, *overrides) -> str:
    """The shell command of a local sweep of two long sinusoid jobs (seed=0,1) in ``sweep``."""
    return shlex.join([sys.executable, "-m", "metarun.runner.cli", "-m", "hydra/launcher=local", *SLOW_RUN, "seed=0,1",
                       *overrides, f"hydra.sweep.dir={sweep}"])


def logged(sweep: Path, more_than: dict = None):
    """Whether both jobs of ``sweep`` have logged metrics (more lines than ``more_than`` gives their directories)."""
    def ready():
        files = list(sweep.glob("*/metrics.jsonl"))
        counts = {f.parent.name: len(f.read_text().splitlines()) for f in files}
        return len(files) == 2 and all(counts[name] > (more_than or {}).get(name, 0) for name in counts)
    return ready


def job_processes(sweep: Path) -> list:
    """The live processes of ``sweep``'s jobs: submitit's controllers and tasks, which name its folder."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(sweep).encode() in cmdline.read_bytes() and alive(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:  # it ended meanwhile
            continue
    return found


def stopped_jobs(err: str, sweep: Path) -> dict:
    """{job number: iteration} from the sweep's per-job lines in ``err``, each checked against its checkpoint."""
    iterations = {}
    for line in err.splitlines()[:-1]:
        number, overrides, cause = JOB_LINE.fullmatch(line).groups()
        iteration, checkpoint, hint = PREEMPTED.fullmatch(cause).groups()
        assert f"seed={number}" in overrides.split() and hint == pasteable("hydra.sweep.dir", sweep)
        assert Path(checkpoint).parent.parent.parent == sweep
        assert load_checkpoint(Path(checkpoint)).iteration == int(iteration)
        iterations[int(number)] = int(iteration)
    return iterations


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda signum: signum.name)
def test_a_stop_signal_to_the_sweep_process_alone_checkpoints_and_stops_its_jobs(tmp_path, signum):
    sweep = tmp_path / "sweep"
    process = start_in_shell(sweep_command(sweep), logged(sweep))
    process.send_signal(signum)  # a scheduler, `kill PID`, a closed terminal: the jobs get nothing themselves
    out, err = process.communicate()
    assert process.returncode == 128 + signum, err
    assert set(stopped_jobs(err, sweep)) == {0, 1}
    assert err.splitlines()[-1] == (f"metarun: error: {launcher.CAUSES[signum]}; the sweep passed it on to its jobs"
                                    f"{'' if signum == signal.SIGTERM else ' as SIGTERM'}: 2 of 2 did not finish "
                                    "(named above)")
    wait_for(lambda: not job_processes(sweep), "a job of the sweep still runs")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_ctrl_c_on_a_terminal_is_one_line_per_job_and_the_printed_hint_continues_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    process = start_in_shell(sweep_command(sweep), logged(sweep))
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
    out, err = process.communicate()
    assert process.returncode == 130 and "Traceback" not in err and len(err.splitlines()) == 3, err
    first = stopped_jobs(err, sweep)
    assert err.splitlines()[-1].startswith("metarun: error: interrupted (Ctrl-C); the sweep passed it on")
    wait_for(lambda: not job_processes(sweep), "a job of the sweep still runs")
    # the same command with the printed hint, through the shell: each job goes on from its checkpoint
    counts = {f.parent.name: len(f.read_text().splitlines()) for f in sweep.glob("*/metrics.jsonl")}
    hint = PREEMPTED.fullmatch(JOB_LINE.fullmatch(err.splitlines()[0]).group(3)).group(3)
    process = start_in_shell(f"{sweep_command(sweep)} {hint}", logged(sweep, counts))
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate()
    assert process.returncode == 143, err
    assert all(iteration > first[number] for number, iteration in stopped_jobs(err, sweep).items())
    assert len(list(sweep.glob("*/checkpoints/last.pt"))) == 2  # the same two run directories
    wait_for(lambda: not job_processes(sweep), "a job of the sweep still runs")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_second_signal_kills_jobs_that_have_not_stopped(tmp_path):
    sweep = tmp_path / "sweep"
    # a checkpoint each iteration, then at iteration 5 a validation of a million episodes, which runs on after SIGTERM
    slow_validation = ["train.checkpoint_every=1", "train.val_every=5", "eval.val_episodes=1000000"]
    checkpoints = lambda: [p for p in sweep.glob("*/checkpoints/last.pt")]  # noqa: E731
    process = start_in_shell(sweep_command(sweep, *slow_validation),
                    lambda: len(checkpoints()) == 2 and all(load_checkpoint(p).iteration == 4 for p in checkpoints()))
    process.send_signal(signal.SIGTERM)
    time.sleep(2.0)  # two signals at once would be one
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate()
    assert process.returncode == 143, err
    hint = pasteable("hydra.sweep.dir", sweep)
    for line in err.splitlines()[:-1]:  # "after 60 s": the machine was too slow to tell the two signals apart
        assert re.fullmatch(rf"metarun: error: job #\d \(.*\): killed (at the second signal|after 60 s), before it "
                            rf"had stopped; to continue, run the same command with {re.escape(hint)} \(resume=auto "
                            r"picks up its checkpoint, if any\)", line), err
    assert len(err.splitlines()) == 3
    wait_for(lambda: not job_processes(sweep), "a killed job's task outlived its controller")
    assert [load_checkpoint(p).iteration for p in checkpoints()] == [4, 4]
