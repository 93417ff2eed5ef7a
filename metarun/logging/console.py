"""Console progress: a live bar with metrics and ETA on a terminal, plain periodic lines otherwise."""

import sys
import time

from tqdm import tqdm


def format_metrics(metrics: dict) -> str:
    """``key=value`` pairs with 4 significant digits."""
    return " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())


class Progress:
    """Progress over ``total`` iterations starting at ``start``; silent when ``enabled`` is false."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, desc: str = "train", stream=None):
        """Use a tqdm bar when ``stream`` is a terminal, else print lines at each ``update(..., metrics)``."""
        self.stream = stream or sys.stderr
        self.total, self.position, self.enabled, self.desc = total, start, enabled, desc
        self.tty = enabled and self.stream.isatty()
        self.started, self.start = time.perf_counter(), start
        self.bar = tqdm(total=total, initial=start, desc=desc, file=self.stream, dynamic_ncols=True) if self.tty else None

    def update(self, position: int, metrics: dict | None = None) -> None:
        """Advance to ``position``; ``metrics`` refresh the bar's postfix or print one line."""
        if self.bar is not None:
            self.bar.update(position - self.position)
            if metrics:
                self.bar.set_postfix_str(format_metrics(metrics), refresh=False)
        elif self.enabled and metrics:
            elapsed = time.perf_counter() - self.started
            done = max(position - self.start, 1)
            eta = elapsed / done * (self.total - position)
            print(f"[{self.desc}] {position}/{self.total} {format_metrics(metrics)} "
                  f"elapsed={elapsed:.0f}s eta={eta:.0f}s", file=self.stream, flush=True)
        self.position = position

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()
