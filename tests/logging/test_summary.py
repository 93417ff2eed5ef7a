"""The final summary table a run prints, and the table renderers the report shares."""

import io

from metarun.logging.summary import ConsoleSummary
from metarun.logging.table import metrics_with_ci, render_markdown, render_text

RESULTS = {"test/mse": 0.51234, "test/mse_ci95": 0.031, "test/mse_by_step": [1.0, 0.5], "val/mse": 0.6,
           "val/mse_ci95": 0.04, "test/episodes": 600, "algo": "maml", "wall_s": 12.34}


def test_summary_lists_each_metric_with_its_ci_and_the_wall_time():
    stream = io.StringIO()
    summary = ConsoleSummary(stream)
    summary.log(10, {"train/loss": 1.0})
    summary.finish(RESULTS)
    assert stream.getvalue().splitlines() == [
        "metric    value",
        "--------  --------------",
        "test/mse  0.5123 ± 0.031",
        "val/mse   0.6 ± 0.04",
        "wall_s    12.3",
    ]


def test_accuracies_print_in_percent_with_the_ci_in_points():
    stream = io.StringIO()
    ConsoleSummary(stream).finish({"test/acc": 0.58491, "test/acc_ci95": 0.01234, "val/acc": 0.6, "val/acc_ci95": 0.02})
    assert stream.getvalue().splitlines()[2:] == ["test/acc  58.49 ± 1.23%", "val/acc   60.00 ± 2.00%"]


def test_failed_run_prints_no_summary():
    stream = io.StringIO()
    ConsoleSummary(stream).finish(None)
    assert stream.getvalue() == ""


def test_markdown_table_escapes_pipes():
    assert metrics_with_ci(RESULTS) == {"test/mse": "0.5123 ± 0.031", "val/mse": "0.6 ± 0.04"}
    assert render_markdown(["a", "b"], [["x|y", 1]]) == "| a | b |\n|---|---|\n| x\\|y | 1 |"
    assert render_text(["a"], [["long"]]) == "a\n----\nlong"
