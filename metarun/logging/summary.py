"""The final summary table a run prints when it ends: each metric with its 95% CI, and the wall time."""

import sys

from metarun.logging.table import metrics_with_ci, render_text


class ConsoleSummary:
    """A logger that ignores steps and prints the results table in ``finish`` (nothing when the run failed)."""

    def __init__(self, stream=None):
        """Print to ``stream`` (stdout by default)."""
        self.stream = stream or sys.stdout

    def log(self, step: int, metrics: dict) -> None:
        """Nothing per step: the progress bar shows live metrics."""

    def finish(self, results) -> None:
        """Print ``metric | mean ± ci95`` rows for ``results``."""
        if results is None:
            return
        rows = [[key, value] for key, value in metrics_with_ci(results).items()]
        if "wall_s" in results:
            rows.append(["wall_s", f"{results['wall_s']:.1f}"])
        print(render_text(["metric", "value"], rows), file=self.stream, flush=True)
