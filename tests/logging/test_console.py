"""Console progress prints plain lines with metrics and ETA when the stream is not a terminal; long phases
without metrics print a line every few seconds."""

import io
import re

from metarun.logging import console
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


class Clock:
    """A stand-in for time.perf_counter that the test advances."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_counts_what_remains_at_the_current_speed(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(console.time, "perf_counter", clock)
    stream = io.StringIO()
    # resumed at 800 of 1000 after a slow start-up (auto's timing): neither the 800 iterations done before nor
    # the 60 s of start-up count towards the speed
    progress = Progress(total=1000, start=800, stream=stream)
    clock.now = 60.0
    progress.begin()
    clock.now = 70.0
    progress.update(850, {"train/loss": 1.0})  # 50 iterations in 10 s
    clock.now = 90.0
    progress.update(900, {"train/loss": 1.0})  # 50 iterations in 20 s: slower now
    lines = stream.getvalue().splitlines()
    assert lines == ["[train] 850/1000 train/loss=1 elapsed=10s eta=30s", "[train] 900/1000 train/loss=1 elapsed=30s eta=40s"]


def test_a_long_phase_prints_a_line_every_few_seconds_in_a_log(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(console.time, "perf_counter", clock)
    stream = io.StringIO()
    monkeypatch.setattr(console.sys, "stderr", stream)
    monkeypatch.setitem(console._shown, "progress", True)  # as logger.console=true set it
    seen = []
    for item in console.tracked(range(6), 6, "test (600 episodes)", unit="batch"):
        seen.append(item)
        clock.now += 4.0  # 4 s per batch: a line after the 3rd and the 6th (every LINE_EVERY_S = 10 s)
    assert seen == list(range(6))
    assert stream.getvalue().splitlines() == ["[test (600 episodes)] 3/6 elapsed=12s eta=12s",
                                              "[test (600 episodes)] 6/6 elapsed=24s eta=0s"]
    console.note("building the dataset cache …")
    assert stream.getvalue().endswith("eta=0s\nbuilding the dataset cache …\n")
    console.show_progress(False)  # logger.console=false
    stream.seek(0)
    stream.truncate(0)
    list(console.tracked(range(6), 6, "test", unit="batch"))
    console.note("building the dataset cache …")
    assert stream.getvalue() == ""


def test_accuracies_show_in_percent():
    stream = io.StringIO()
    progress = Progress(total=10, stream=stream)
    progress.update(10, {"train/loss": 0.5, "train/acc": 0.58491})
    assert "train/loss=0.5 train/acc=58.49%" in stream.getvalue()
