"""Console progress prints plain lines with metrics and ETA when the stream is not a terminal."""

import io
import re

from metarun.logging.console import Progress


def test_plain_lines_with_metrics_and_eta_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(total=100, stream=stream)
    progress.update(10)  # no metrics: nothing to say yet
    progress.update(50, {"train/loss": 0.123456, "val/mse": 2.0})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\[train\] 50/100 train/loss=0\.1235 val/mse=2 elapsed=\d+s eta=\d+s", lines[0])


def test_disabled_progress_is_silent():
    stream = io.StringIO()
    progress = Progress(total=10, enabled=False, stream=stream)
    progress.update(10, {"train/loss": 1.0})
    progress.close()
    assert stream.getvalue() == ""
