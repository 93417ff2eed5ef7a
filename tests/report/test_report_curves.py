"""metarun-report --curves for metrics that some runs, or none, logged in metrics.jsonl: one line names them, the
rest is plotted, and a report with nothing to plot stops before writing anything."""

import json

import pytest

from metarun.report.cli import main
from metarun.report.plots import curve_data
from metarun.report.runs import find_runs
from tests.report.conftest import SHARED, write_run

pytest.importorskip("matplotlib", reason="the report extra (matplotlib) is not installed")

LOGGED = "the runs logged train/loss, val/mse, val/mse_ci95"


def keep_rows(run, *keys) -> None:
    """Rewrite the run's metrics.jsonl with only ``keys`` (and the step) of each row, as a run that never validated."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [{k: v for k, v in row.items() if k in ("step", *keys)} for row in rows]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))


def report_of(*args) -> int:
    """``metarun-report ARGS``'s exit status."""
    try:
        main([str(arg) for arg in args])
    except SystemExit as stop:
        return stop.code
    return 0


def test_the_runs_that_did_not_log_a_metric_are_named_in_one_line_and_the_others_plotted(sinusoid, tmp_path, capsys):
    runs = sorted(sinusoid.iterdir())
    for run in runs[:2]:
        keep_rows(run, "train/loss")
    assert report_of(sinusoid, "--curves", "train/loss,val/mse", "--out", tmp_path / "out") == 0
    assert capsys.readouterr().err == (f"metarun-report: warning: --curves val/mse: 2 of 4 runs did not log it in "
                                       f"metrics.jsonl and are left out of its panel: {runs[0]}, {runs[1]}\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["curves.png", "report.csv", "report.md"]
    curves = curve_data(find_runs([sinusoid]), ["val/mse"])["val/mse"]
    assert sorted(curves) == ["algo=fomaml, dataset.shots=10", "algo=fomaml, dataset.shots=5"]


def test_many_runs_without_the_metric_are_counted_after_the_first_few(sinusoid, tmp_path, capsys):
    runs = sorted(sinusoid.iterdir())
    write_run(sinusoid / "4_algo=anil,dataset.shots=5", ["algo=anil", "dataset.shots=5", *SHARED], "sinusoid", "mse", 2)
    for run in runs:
        keep_rows(run, "train/loss")
    assert report_of(sinusoid, "--no-plot", "--out", tmp_path / "tables") == 0  # no plot: no curve asked for
    assert report_of(sinusoid, "--out", tmp_path / "out") == 0
    assert capsys.readouterr().err == (f"metarun-report: warning: --curves val/mse: 4 of 5 runs did not log it in "
                                       f"metrics.jsonl and are left out of its panel: {runs[0]}, {runs[1]}, {runs[2]} "
                                       "and 1 more\n")


def test_a_metric_of_another_dataset_is_not_missing_from_this_one(mixed, tmp_path, capsys):
    assert report_of(mixed, "--out", tmp_path / "out") == 0  # val/acc for Omniglot, val/mse for the sinusoid
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("metric, note", [
    ("val/mze", ""),  # a typo
    ("test/mse", " (test/mse: in results.json, the final results the tables show)"),
])
def test_a_metric_no_run_logged_stops_the_report_before_any_file_naming_what_was_logged(metric, note, sinusoid,
                                                                                       tmp_path, capsys):
    assert report_of(sinusoid, "--curves", metric, "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == (f"metarun-report: error: --curves {metric}: no run logged it in "
                                       f"metrics.jsonl{note}; {LOGGED}\n")
    assert not (tmp_path / "out").exists()


def test_a_metric_no_run_logged_beside_one_they_did_is_named_and_the_other_plotted(sinusoid, tmp_path, capsys):
    assert report_of(sinusoid, "--curves", "val/mze,train/loss", "--out", tmp_path / "out") == 0
    assert capsys.readouterr().err == (f"metarun-report: warning: --curves val/mze: no run logged it in "
                                       f"metrics.jsonl; {LOGGED}\n")
    assert (tmp_path / "out" / "curves.png").is_file()


def test_runs_that_logged_nothing_yet_have_no_curves_to_plot(sinusoid, tmp_path, capsys):
    for run in sinusoid.iterdir():
        (run / "metrics.jsonl").write_text("")
    assert report_of(sinusoid, "--curves", "val/mse,train/loss", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == ("metarun-report: error: --curves val/mse,train/loss: no run logged any of them "
                                       "in metrics.jsonl (val/mse: in results.json, the final results the tables "
                                       "show); the runs logged no metric yet (pass --no-plot)\n")
    assert not (tmp_path / "out").exists()


def test_a_group_whose_runs_share_no_step_of_the_metric_has_nothing_to_plot(sinusoid, tmp_path, capsys):
    for run in sorted(sinusoid.iterdir())[1::2]:  # shots=10 validated at step 10, shots=5 at step 20
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows[0], rows[1] = {**rows[1], "step": 10}, {**rows[0], "step": 20}
        (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert report_of(sinusoid, "--curves", "val/mse", "--group-by", "algo", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == (
        "metarun-report: warning: --curves val/mse: the runs of each group logged it at different steps, with none "
        "in common\nmetarun-report: error: --curves val/mse: nothing to plot (see the warnings above)\n")
    assert not (tmp_path / "out").exists()
