"""Preemption: a scheduler's stop signal becomes "write the checkpoint and exit" at the end of the iteration.

SLURM sends SIGTERM when it preempts a job; submitit sends USR2 (its SUBMITIT_PREEMPT_SIGNAL) ``signal_delay_s``
before the time limit; ``sbatch --signal`` setups often use USR1. Dying there loses the work since the last
checkpoint, so inside ``PreemptionGuard`` these signals are only recorded; the loop checks ``requested`` once
per iteration, saves ``checkpoints/last.pt`` and raises ``stopped(...)``. Leaving the block restores the old
handlers and hands them the signal: submitit's requeues the job into the same run directory, where
``resume=auto`` (the default) continues from that checkpoint.

Ctrl-C (SIGINT) is treated the same way, except that it is not handed on (that would raise KeyboardInterrupt
after the checkpoint) and a second Ctrl-C quits at once.
"""

import signal
import threading
from pathlib import Path

from metarun.utils.errors import RunError
from metarun.utils.resume_hint import same_command

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class Preempted(RunError):
    """The run stopped on a preemption signal after writing its checkpoint."""


class PreemptionGuard:
    """Context manager that records ``SIGNALS`` instead of dying on them, then forwards the one received
    (but SIGINT, whose default handler would raise KeyboardInterrupt)."""

    def __init__(self, signals: tuple = SIGNALS):
        """Guard ``signals`` (SIGTERM, SIGUSR1, SIGUSR2 and SIGINT by default)."""
        self.signals, self.received, self._previous = signals, None, {}

    def __enter__(self) -> "PreemptionGuard":
        """Install the recording handler (Python runs signal handlers only in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in self.signals}
        return self

    def _record(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # Ctrl-C after a stop signal: the user does not want to wait for the iteration
        # the first signal decides: a scheduler's USR2 must still reach its requeue handler after a later SIGTERM
        self.received = self.received or signal.Signals(signum)

    @property
    def requested(self) -> bool:
        """Whether a preemption signal has arrived."""
        return self.received is not None

    def stopped(self, iteration: int, checkpoint: Path) -> Preempted:
        """The error to raise once ``checkpoint`` holds ``iteration``."""
        cause = "interrupted (Ctrl-C)" if self.received == signal.SIGINT else f"preempted by {self.received.name}"
        return Preempted(f"{cause} after iteration {iteration}; {checkpoint} holds it; to continue, run "
                         f"{same_command(Path(checkpoint).parent.parent)} (resume=auto, the default, picks the "
                         "checkpoint up)")

    def __exit__(self, *exc) -> bool:
        """Restore the previous handlers and pass them the signal received, if any (submitit's requeues the job)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        previous = self._previous.get(self.received)
        if callable(previous) and self.received != signal.SIGINT:
            previous(self.received, None)
        return False
