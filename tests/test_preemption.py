"""Preemption signals are recorded, the loop checkpoints and stops, and the old handler still gets the signal."""

import os
import signal

import pytest

from metarun.runner.preemption import Preempted, PreemptionGuard
from metarun.utils.errors import RunError


def loop_with_hook(iterations, signal_at, signum, checkpoints):
    """A training loop with the two-line hook of metarun/runner/train.py; the scheduler signals at ``signal_at``."""
    with PreemptionGuard() as preemption:
        for iteration in range(1, iterations + 1):
            if iteration == signal_at:
                os.kill(os.getpid(), signum)
            if preemption.requested:
                checkpoints.append(iteration)
                raise preemption.stopped(iteration, "run/checkpoints/last.pt")
    return iterations


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_signal_makes_the_loop_checkpoint_and_stop_at_that_iteration(signum):
    checkpoints = []
    with pytest.raises(Preempted, match=rf"preempted by {signum.name} after iteration 3; run/checkpoints/last.pt "
                                        "holds it; to continue, run the same command with hydra.run.dir=run "
                                        r"\(resume=auto, the default, picks the checkpoint up\)"):
        loop_with_hook(10, 3, signum, checkpoints)
    assert checkpoints == [3] and issubclass(Preempted, RunError)
    assert signal.getsignal(signum) is signal.SIG_DFL  # the process dies on it again outside the guard


def test_no_signal_no_stop():
    assert loop_with_hook(5, None, None, []) == 5


def test_the_previous_handler_gets_the_signal_after_the_checkpoint():
    # submitit installs a USR2 handler that requeues the job; it must still run, after our checkpoint
    events = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: events.append(("requeue", signum)))
    try:
        with pytest.raises(Preempted):
            loop_with_hook(10, 2, signal.SIGUSR2, events)
        assert events == [2, ("requeue", signal.SIGUSR2)]
    finally:
        signal.signal(signal.SIGUSR2, previous)
