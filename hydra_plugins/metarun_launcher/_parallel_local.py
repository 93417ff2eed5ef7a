"""``hydra/launcher=local``: submitit's local launcher, giving each job a GPU of its own, telling it how many jobs
share the machine, and stopping the jobs with the sweep.

Without a GPU (or with ``hardware.device=cpu``) it starts all of a launch's jobs at once, each shown no GPU, as
submitit does. With GPUs (``visible_gpus``: those the user's ``CUDA_VISIBLE_DEVICES`` lists, else all) it starts them
in batches of #GPUs x ``hardware.jobs_per_gpu``, the next once the last has finished, and hands the GPUs out in turn,
each job's as its only ``CUDA_VISIBLE_DEVICES``: submitit's own choice is the same devices for every job (none unless
``gpus_per_node`` is set). Each job sizes its threads from its share of the cores (``hardware.available_cores``).
Needs the ``sweep`` extra (hydra-submitit-launcher); the package imports this module only where that is installed.

A job is two processes: submitit's controller and the task it starts. Left alone they outlive a sweep process
that is stopped (and train on under PID 1), and a terminal's Ctrl-C reaches them too: the controller prints a
traceback and kills its task a second later, checkpointed or not. So a job takes stop signals from the sweep
process only (its controller starts with SIGINT and SIGHUP ignored, its task leaves the terminal's session).
When the sweep process gets SIGINT, SIGTERM or SIGHUP (Ctrl-C, a scheduler, a closed terminal) it sends SIGTERM to
every job, which checkpoints its iteration and stops; after ``GRACE_S``, or at a second signal, it kills the jobs
still running (a task dies with its controller). Then it names each job that did not finish, one line each, and
exits with 128 + the signal's number.
"""

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Optional, Sequence

from hydra.core.utils import filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

from metarun.config.validate import check_fields
from metarun.utils.errors import PREFIX, StartRefused
from metarun.utils.resume_hint import same_command

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CAUSES = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "stopped by SIGTERM",
          signal.SIGHUP: "stopped by SIGHUP (the terminal closed)"}
GRACE_S = 60.0  # for a job to finish its iteration and write its checkpoint


class StopSweep(BaseException):
    """The sweep process's first stop signal, raised out of submitit's wait for the jobs' results (a
    BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way keeps it)."""


class ParallelLocalLauncher(LocalLauncher):
    """``LocalLauncher`` that runs its jobs in batches the machine's GPUs hold, a GPU to each job, sets
    ``METARUN_PARALLEL_JOBS`` to the number of jobs it starts together, and stops its jobs when the sweep process
    is told to stop."""

    def launch(self, job_overrides, initial_job_idx: int):
        """Start ``job_overrides``' jobs in batches (all at once without a GPU, ``hardware.jobs_per_gpu`` per GPU
        with), each knowing how many run beside it; return their results once all have finished."""
        from metarun.utils.hardware import PARALLEL_JOBS  # here: the CLI loads torch only once the config is good

        gpus = sweep_gpus(self.config.hardware)
        together = len(gpus) * self.config.hardware.jobs_per_gpu or len(job_overrides)
        jobs, results = JobProcesses(GRACE_S, gpus), []
        with jobs.stopped_with_sweep():
            try:
                for first in range(0, len(job_overrides), together):  # submitit's launch waits for all of a batch
                    batch = job_overrides[first:first + together]
                    # submitit copies this process's environment into each job it starts
                    os.environ[PARALLEL_JOBS] = str(len(batch))
                    results += super().launch(batch, initial_job_idx + first)
                return results
            except StopSweep:
                jobs.stop()
            exit_stopped(jobs, job_overrides, initial_job_idx, self.params["submitit_folder"],
                         self.config.hydra.sweep.dir)

    def __call__(self, *args, **kwargs):
        """Run one job in submitit's task process, which takes stop signals from the sweep process only."""
        # out of the terminal's session: its Ctrl-C reaches the sweep process, which passes it on once as SIGTERM
        os.setsid()
        # submitit's tasks log SIGTERM and go on; here it stops the job (in training, after the checkpoint)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        threading.Thread(target=die_with, args=(os.getppid(),), daemon=True).start()
        return super().__call__(*args, **kwargs)


class JobProcesses:
    """The controllers submitit starts for one launch, each on its GPU, stopped when the sweep process is."""

    def __init__(self, grace_s: float, gpus: Sequence[str] = ()):
        """No controller started yet; a job gets ``grace_s`` seconds to stop before it is killed, and the next of
        ``gpus`` in turn as its only visible device (none given: the devices submitit picks)."""
        self.grace_s, self.started, self.killed, self.received, self.hurry = grace_s, [], set(), None, False
        self.gpus, self._starting = list(gpus), False

    @contextmanager
    def stopped_with_sweep(self):
        """Record the controllers submitit starts, and raise ``StopSweep`` at the first of ``STOP_SIGNALS``."""
        from submitit.local import local  # here: submitit loads only for a sweep

        start, previous = local.start_controller, {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        # submitit has no option for how it starts a controller: its module's function is the one place
        local.start_controller = lambda *args, **kwargs: self._start(start, *args, **kwargs)
        try:
            yield self
        finally:
            local.start_controller = start
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, start, *args, **kwargs):
        """submitit's ``start_controller``, with SIGINT and SIGHUP ignored by the controller and its task (an
        ignored signal stays ignored across exec) and the next GPU as their only one; a stop signal arriving
        meanwhile waits for the record."""
        if self.gpus:  # submitit makes cuda_devices the controller's CUDA_VISIBLE_DEVICES, which its task inherits
            kwargs["cuda_devices"] = self.gpus[len(self.started) % len(self.gpus)]
        self._starting = True
        ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGHUP)}
        try:
            self.started.append(start(*args, **kwargs))
        finally:
            for sig, handler in ignored.items():  # a Ctrl-C in between is lost: the user presses it again
                signal.signal(sig, handler)
            self._starting = False
        if self.received is not None:
            raise StopSweep
        return self.started[-1]

    def _on_signal(self, signum, frame) -> None:
        """Leave submitit's wait at the first stop signal (once the controller starting is recorded)."""
        if self.received is not None:
            self.hurry = True  # a second signal: kill the jobs rather than wait for their checkpoints
            return
        self.received = signal.Signals(signum)
        if not self._starting:
            raise StopSweep

    def stop(self) -> None:
        """Send SIGTERM to every job still running (its controller passes it to the task); kill those running
        after the grace, or at a second signal."""
        running = [process for process in self.started if process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.grace_s
        while any(process.poll() is None for process in running) and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.1)
        for process in running:
            if process.poll() is None:
                process.kill()
                self.killed.add(process.pid)
            process.wait()

    def report(self, index: int, folder: str, hint: str) -> Optional[str]:
        """Why the ``index``-th job of the launch did not finish, with how to continue (None: it finished)."""
        from submitit.core.utils import JobPaths

        if index >= len(self.started):
            return f"not started; {hint}"
        paths = JobPaths(folder, job_id=str(self.started[index].pid))
        if paths.result_pickle.exists():
            return None  # finished: its results, or its error, are the sweep's
        log = paths.stderr.read_text(errors="replace").splitlines() if paths.stderr.is_file() else []
        own = [line for line in log if line.startswith(PREFIX)]
        if own:
            return own[-1][len(PREFIX):]  # the job's own report: the iteration it checkpointed, how to continue
        if self.started[index].pid in self.killed:
            when = "at the second signal" if self.hurry else f"after {self.grace_s:.0f} s"
            return f"killed {when}, before it had stopped; {hint}"
        return f"stopped outside its training loop (starting or in its meta-test); {hint}"


def exit_stopped(jobs: "JobProcesses", job_overrides, first: int, folder: str, sweep_dir: str) -> None:
    """Name each of the launch's jobs that did not finish, one line each, then exit with 128 + the signal."""
    hint = f"to continue, run {same_command(sweep_dir=sweep_dir)} (resume=auto picks up its checkpoint, if any)"
    reports = [(first + index, overrides, jobs.report(index, folder, hint))
               for index, overrides in enumerate(job_overrides)]
    unfinished = [(number, overrides, cause) for number, overrides, cause in reports if cause]
    for number, overrides, cause in unfinished:
        print(f"{PREFIX}job #{number} ({' '.join(filter_overrides(overrides))}): {cause}", file=sys.stderr)
    passed = "passed it on to its jobs" + ("" if jobs.received == signal.SIGTERM else " as SIGTERM")
    print(f"{PREFIX}{CAUSES[jobs.received]}; the sweep {passed}: {len(unfinished)} of {len(job_overrides)} did not "
          "finish" + (" (named above)" if unfinished else ""), file=sys.stderr)
    sys.exit(128 + jobs.received)


def sweep_gpus(hardware) -> list:
    """The GPUs a launch hands its jobs in turn, one each (``visible_gpus``); none for jobs on the CPU
    (``hardware.device=cpu``), which all start at once as on a machine without a GPU.

    Raises:
        StartRefused: before any job starts, for a ``hardware`` value out of its range (``jobs_per_gpu`` below 1),
            or a ``hardware.device=cuda:N`` past the one GPU each job sees.
    """
    try:
        check_fields(hardware, "hardware.")
    except ValueError as err:
        raise StartRefused(f"{err}; no job of the sweep ran") from None
    if hardware.device == "cpu":
        return []
    gpus = visible_gpus()
    if gpus and hardware.device.startswith("cuda:") and hardware.device != "cuda:0":
        raise StartRefused(f"hardware.device={hardware.device}, but each job of hydra/launcher=local sees one GPU, "
                           "its own, as cuda:0; set hardware.device=cuda (or auto), and CUDA_VISIBLE_DEVICES to the "
                           "GPUs the sweep may use; no job of the sweep ran")
    return gpus


def visible_gpus() -> list:
    """The GPUs a sweep's jobs share, as ``CUDA_VISIBLE_DEVICES`` names them: those the user's own
    ``CUDA_VISIBLE_DEVICES`` lists (e.g. "2,3" or GPU UUIDs), else every GPU torch counts; none without CUDA."""
    import torch  # here: the CLI loads torch only once the config is good

    # torch counts the devices CUDA_VISIBLE_DEVICES lists, up to the first that does not exist
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in listed.split(",")] if listed is not None else [str(i) for i in range(count)]
    return names[:count]


def die_with(controller: int) -> None:
    """Kill this process once its parent ``controller`` is gone: a job must not outlive submitit's controller,
    which the sweep process kills when the job does not stop in time."""
    while os.getppid() == controller:
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
