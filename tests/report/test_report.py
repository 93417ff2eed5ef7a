"""metarun-report on a real 4-job sweep: the ranked table, its Markdown/CSV files and the learning-curve PNG."""

import csv
import json
import shutil
from importlib.metadata import entry_points

import pytest

from metarun.report.cli import main, parse_args, report
from metarun.report.table import lower_is_better
from tests.conftest import TINY, run_cli
from tests.docs import doc_command

GRID = "metarun -m algo=maml,fomaml dataset.shots=5,10"

pytest.importorskip("matplotlib", reason="the report extra (matplotlib) is not installed")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The doc's 4-job sweep with a tiny budget: algo × shots."""
    path = tmp_path_factory.mktemp("report") / "sweep"
    out = run_cli(*doc_command(GRID), *TINY, f"hydra.sweep.dir={path}")
    assert out.returncode == 0, out.stderr
    return path


def test_sweep_layout_one_directory_per_job(sweep):
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name.split(",")[:2] for name in jobs] == [
        ["0_algo=maml", "dataset.shots=5"], ["1_algo=maml", "dataset.shots=10"],
        ["2_algo=fomaml", "dataset.shots=5"], ["3_algo=fomaml", "dataset.shots=10"]]
    for job in jobs:
        for item in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "results.json", "checkpoints/last.pt"):
            assert (sweep / job / item).is_file()
    assert (sweep / "multirun.yaml").is_file()


def test_report_ranks_runs_writes_table_files_and_plots_grouped_curves(sweep, tmp_path, capsys):
    args = doc_command("metarun-report outputs/multirun")
    assert args[1:] == ["--sort", "test/mse", "--group-by", "algo"]
    out = report(parse_args([str(sweep), *args[1:], "--out", str(tmp_path)]))
    results = {run.path.name: json.loads((run.path / "results.json").read_text()) for run in out["runs"]}
    ranked = [r["test/mse"] for r in results.values()]
    assert ranked == sorted(ranked) and len(ranked) == 4

    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["run", "algo", "dataset.shots", "test/mse", "val/mse", "wall_s"]
    best = out["runs"][0]
    assert printed[2].split()[:4] == [best.path.name.split("_")[0], best.overrides["algo"],
                                      best.overrides["dataset.shots"], f"{best.results['test/mse']:.4g}"]
    markdown = (tmp_path / "report.md").read_text().splitlines()
    assert len(markdown) == 2 + 4 and "± " in markdown[2]
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [float(row["test/mse"]) for row in rows] == ranked
    assert {row["algo"] for row in rows} == {"maml", "fomaml"} and all(row["test/mse_ci95"] for row in rows)

    curves = out["curves"]
    assert set(curves) == {"train/loss", "val/mse"}
    assert set(curves["train/loss"]) == {"algo=maml", "algo=fomaml"}
    maml_runs = [run for run in out["runs"] if run.overrides["algo"] == "maml"]
    expected = [sum(run.history[i]["train/loss"] for run in maml_runs) / 2 for i in range(2)]
    assert curves["train/loss"]["algo=maml"]["step"] == [10, 20]
    assert curves["train/loss"]["algo=maml"]["mean"] == pytest.approx(expected)
    assert curves["train/loss"]["algo=maml"]["runs"] == 2
    with Image.open(tmp_path / "curves.png") as png:
        png.verify()
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100


def test_descending_flag_reverses_the_order_and_runs_can_be_listed_one_by_one(sweep, tmp_path):
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    out = report(parse_args([*map(str, runs), "--sort", "val/mse", "--descending", "--no-plot", "--out", str(tmp_path)]))
    values = [run.results["val/mse"] for run in out["runs"]]
    assert values == sorted(values, reverse=True) and "png" not in out["written"]


def test_an_unfinished_run_is_listed_last_and_still_plotted(sweep, tmp_path):
    for job in sorted(p for p in sweep.iterdir() if p.is_dir())[:2]:
        shutil.copytree(job, tmp_path / "runs" / job.name)
    unfinished = sorted((tmp_path / "runs").iterdir())[0]
    (unfinished / "results.json").unlink()
    out = report(parse_args([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]))
    assert out["runs"][-1].path == unfinished and out["runs"][0].results is not None
    assert (tmp_path / "out" / "report.md").read_text().splitlines()[-1].endswith("| unfinished |")
    assert len(out["curves"]["train/loss"]) == 2


def test_a_corrupt_run_is_skipped_with_a_warning_naming_its_file_and_the_rest_reported(sweep, tmp_path, capsys):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    for job in jobs:
        shutil.copytree(job, tmp_path / "runs" / job.name)
    bad_results, cut_metrics = (tmp_path / "runs" / jobs[0].name / "results.json",
                                tmp_path / "runs" / jobs[1].name / "metrics.jsonl")
    bad_results.write_text('{"test/mse": 0.5, ')
    cut_metrics.write_text(cut_metrics.read_text() + '{"step": 9')  # a line a kill cut short
    out = report(parse_args([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]))
    err = capsys.readouterr().err
    assert f"metarun-report: warning: skipped the run {bad_results.parent}: cannot read {bad_results} (JSONDecodeError" in err
    lines = len(cut_metrics.read_text().splitlines())
    assert f"metarun-report: warning: skipped line {lines} of {cut_metrics}: not valid JSON" in err
    assert len(out["runs"]) == len(jobs) - 1 and (tmp_path / "out" / "curves.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["{empty}"], "holds no runs"),
    (["{missing}"], "does not exist"),
    (["{sweep}", "--sort", "test/acc"], "--sort test/acc: no run has this metric; choose one of"),
    (["{sweep}", "--group-by", "nope"], "nope is neither an override nor a config key of run"),
    (["{sweep}", "--curves", "val/acc"], "--curves val/acc: no run logged it in metrics.jsonl; the runs logged "
                                         "train/loss"),
])
def test_bad_input_is_a_one_line_error(sweep, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "sweep": sweep}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**paths) for a in args] + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("metarun-report: error: ") and message in err


@pytest.mark.parametrize("metric, ascending", [("test/mse", True), ("train/loss", True), ("val/acc", False)])
def test_sort_direction_follows_the_metric(metric, ascending):
    assert lower_is_better(metric) == ascending


def test_metarun_report_is_an_installed_command():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "metarun-report"]
    assert script.value == "metarun.report.cli:main"
