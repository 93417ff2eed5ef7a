"""metarun-report --curves for metrics that some runs, or none, logged in metrics.jsonl: one line names them, the
rest is plotted, and a report with nothing to plot stops before writing anything. What a curve shows: an x-axis
spanning the runs, markers on short curves, a band where the metric has a 95% CI."""

import json

import pytest

from metarun.report.plots import curve_data, plot_curves
from metarun.report.runs import find_runs
from tests.report.conftest import SHARED, report_of, write_run

PolyCollection = pytest.importorskip("matplotlib.collections",
                                     reason="the report extra (matplotlib) is not installed").PolyCollection

LOGGED = "the runs logged train/loss, val/mse, val/mse_ci95"
CI95 = 0.05


def keep_rows(run, *keys) -> None:
    """Rewrite the run's metrics.jsonl with only ``keys`` (and the step) of each row, as a run that never validated."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [{k: v for k, v in row.items() if k in ("step", *keys)} for row in rows]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in kept))


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


def logged_run(path, lr, val_steps, iterations=None, planned=None):
    """A run directory of a sweep over optim.lr that logged train/loss every 10 steps up to 100 and val/acc with its
    CI at ``val_steps``; results.json holds ``iterations`` (a finished run) and .hydra/config.yaml ``planned`` as
    train.iterations, where given."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={lr}\n")
    config = "dataset:\n  name: omniglot\n" + (f"train:\n  iterations: {planned}\n" if planned else "")
    (path / ".hydra" / "config.yaml").write_text(config)
    if iterations:
        (path / "results.json").write_text(json.dumps({"iterations": iterations, "dataset": "omniglot"}))
    rows = [{"step": step, "train/loss": 1.0 / step, **({"val/acc": 0.5, "val/acc_ci95": CI95}
                                                        if step in val_steps else {})} for step in range(10, 101, 10)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def curves_figure(paths, tmp_path, metrics=("train/loss", "val/acc")):
    """The figure metarun-report --curves draws for the runs in ``paths``."""
    return plot_curves(curve_data(find_runs(paths), list(metrics)), tmp_path / "curves.png")


def test_runs_validated_once_are_visible_points_with_their_ci_on_an_axis_spanning_the_runs(tmp_path):
    # train.val_every=50 and 100 iterations: the one validation of each run is at its last step
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(("0.001", "0.002")):
        logged_run(sweep / f"{job}_optim.lr={lr}", lr, val_steps=(100,), iterations=100)
    loss, val = curves_figure([sweep], tmp_path).axes
    for axes in (loss, val):
        low, high = axes.get_xlim()
        assert low <= 0 and 100 <= high < 110  # the whole run, not 96..104 around the point
    assert all(list(line.get_xdata()) == [100] and line.get_marker() == "o" for line in val.get_lines())
    # one point has no area to shade: its 95% CI is an error bar from 0.45 to 0.55
    bars = [segment for collection in val.collections for segment in collection.get_segments()]
    assert sorted(tuple(point[1] for point in bar) for bar in bars) == [pytest.approx((0.45, 0.55))] * 2
    assert all(line.get_marker() in ("None", "", None) for line in loss.get_lines())  # 10 points: lines
    assert val.get_title(loc="right") == "band: 95% CI" and not loss.collections  # loss: lone runs, no CI


def test_a_metric_with_a_ci_companion_is_shaded_between_its_bounds(tmp_path):
    run = logged_run(tmp_path / "run", "0.001", val_steps=range(10, 101, 10), iterations=100)
    (curve,) = curve_data(find_runs([run]), ["val/acc"])["val/acc"].values()
    assert (curve["low"], curve["high"]) == (pytest.approx([0.45] * 10), pytest.approx([0.55] * 10))
    (val,) = curves_figure([run], tmp_path, ["val/acc"]).axes
    (band,) = val.collections
    assert isinstance(band, PolyCollection) and band.get_alpha() == pytest.approx(0.2)
    assert val.get_lines()[0].get_marker() in ("None", "", None)


@pytest.mark.parametrize("planned, last", [(500, 500), (None, 100)])
def test_the_axis_of_a_run_still_going_reaches_its_planned_iterations_else_its_last_step(planned, last, tmp_path):
    run = logged_run(tmp_path / "run", "0.001", val_steps=(50, 100), planned=planned)  # no results.json yet
    loss, val = curves_figure([run], tmp_path).axes
    assert all(axes.get_xlim()[0] <= 0 and last <= axes.get_xlim()[1] < 1.1 * last for axes in (loss, val))
    assert all(line.get_marker() == "o" for line in val.get_lines())  # two points: markers
