"""Console progress: a live bar with metrics and ETA on a terminal, plain periodic lines otherwise.

Training shows its progress when ``logger.console`` is on; the other long phases (building a dataset cache,
timing ``task_parallel=auto``, validation and the meta-test) show theirs through ``tracked`` unless
``show_progress(False)`` turned them off for the process.
"""

import sys
import time

from tqdm import tqdm

from metarun.logging.table import is_accuracy

# plain lines of a phase without metrics (a log file, not a terminal) come at most this often
LINE_EVERY_S = 10.0
# a terminal's bar appears only for a phase that lasts longer than this
BAR_DELAY_S = 2.0
_shown = {"progress": True}


def show_progress(on: bool) -> None:
    """Turn the progress of every phase in this process on or off (``logger.console``; off on non-main ranks)."""
    _shown["progress"] = on


def progress_shown() -> bool:
    """Whether the progress of every phase is shown (``show_progress``)."""
    return _shown["progress"]


def format_metrics(metrics: dict) -> str:
    """``key=value`` pairs with 4 significant digits, accuracies in percent."""
    return " ".join(f"{k}={100 * float(v):.2f}%" if is_accuracy(k) else f"{k}={float(v):.4g}" for k, v in metrics.items())


class Progress:
    """Progress over ``total`` iterations starting at ``start``; silent when ``enabled`` is false."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, desc: str = "train", stream=None,
                 unit: str = "it", leave: bool = True):
        """Use a tqdm bar when ``stream`` is a terminal, else print lines at each ``update(..., metrics)`` and,
        without metrics, every ``LINE_EVERY_S`` seconds."""
        self.stream = stream or sys.stderr
        self.total, self.position, self.enabled, self.desc = total, start, enabled, desc
        self.tty = enabled and self.stream.isatty()
        # the speed since the previous line gives the ETA: it counts only what remains, at the current pace
        self.line_time, self.line_position = time.perf_counter(), start
        self.started = self.line_time
        self.bar = tqdm(total=total, initial=start, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                        leave=leave, delay=0 if leave else BAR_DELAY_S) if self.tty else None

    def begin(self) -> None:
        """Start the clock now: the time before (start-up, timing auto's mappings) counts toward neither the speed
        nor the ETA."""
        if self.bar is not None:
            self.bar.unpause()
        self.started = self.line_time = time.perf_counter()

    def update(self, position: int, metrics: dict | None = None) -> None:
        """Advance to ``position``; ``metrics`` refresh the bar's postfix or print one line."""
        if self.bar is not None:
            self.bar.update(position - self.position)
            if metrics:
                self.bar.set_postfix_str(format_metrics(metrics), refresh=False)
        elif self.enabled and (metrics or time.perf_counter() - self.line_time >= LINE_EVERY_S):
            self._line(position, metrics or {})
        self.position = position

    def _line(self, position: int, metrics: dict) -> None:
        now = time.perf_counter()
        rate = (position - self.line_position) / max(now - self.line_time, 1e-9)
        eta = f"{(self.total - position) / rate:.0f}s" if rate > 0 else "?"
        fields = f" {format_metrics(metrics)}" if metrics else ""
        print(f"[{self.desc}] {position}/{self.total}{fields} elapsed={now - self.started:.0f}s eta={eta}",
              file=self.stream, flush=True)
        self.line_time, self.line_position = now, position

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def note(line: str) -> None:
    """Print ``line`` on stderr beside the progress (what a long phase is about to do), unless it is off."""
    if _shown["progress"]:
        print(line, file=sys.stderr, flush=True)


def phase(total: int, desc: str, unit: str = "it") -> Progress:
    """The progress of a phase of ``total`` steps: a bar on a terminal once it lasts a few seconds, a line every
    ``LINE_EVERY_S`` seconds in a log; nothing after ``show_progress(False)``."""
    return Progress(total, enabled=_shown["progress"], desc=desc, unit=unit, leave=False)


def tracked(items, total: int, desc: str, unit: str = "it"):
    """Yield ``items`` (``total`` of them) with the progress of their ``phase``."""
    progress = phase(total, desc, unit)
    try:
        for done, item in enumerate(items, 1):
            yield item
            progress.update(done)
    finally:
        progress.close()
