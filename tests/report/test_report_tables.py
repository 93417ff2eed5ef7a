"""metarun-report on run directories written here (no training): mixed datasets, accuracies, CSV columns, plots."""

import csv
import json
import warnings

import pytest

from metarun.report.cli import parse_args, report
from metarun.report.plots import curve_data, plot_curves
from metarun.report.runs import find_runs

Figure = pytest.importorskip("matplotlib.figure", reason="the report extra (matplotlib) is not installed").Figure
Image = pytest.importorskip("PIL.Image")

# what a sweep's runs set alike: they vary in the tables of a folder mixing two sweeps, unless split by dataset
SHARED = ["train.iterations=20", "train.log_every=10", "train.val_every=20", "eval.episodes=10", "logger.console=False"]
DATA_PATH = "/scratch/someone/datasets/omniglot_background_and_evaluation_sets"


def write_run(path, overrides, dataset, metric, value, ci95=0.0123):
    """A finished run directory as metarun writes it, validated once (at its last step)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    (path / ".hydra" / "config.yaml").write_text(f"dataset:\n  name: {dataset}\n")
    algo = dict(item.split("=", 1) for item in overrides).get("algo", "maml")
    val = {f"val/{metric}": value, f"val/{metric}_ci95": ci95, f"val/{metric}_by_step": [value, value]}
    results = {f"test/{metric}": value, f"test/{metric}_ci95": ci95, **val, "val/nonfinite": 0,
               "algo": algo, "dataset": dataset, "seed": 0, "wall_s": 1.5}
    (path / "results.json").write_text(json.dumps(results))
    rows = [{"step": 10, "train/loss": 2.0}, {"step": 20, "train/loss": 1.0, **val}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def sinusoid(tmp_path):
    """A 4-job sinusoid sweep: algo × shots."""
    for job, (algo, shots) in enumerate([("maml", 5), ("maml", 10), ("fomaml", 5), ("fomaml", 10)]):
        write_run(tmp_path / "sin" / f"{job}_algo={algo},dataset.shots={shots}",
                  [f"algo={algo}", f"dataset.shots={shots}", *SHARED], "sinusoid", "mse", 1.0 + job)
    return tmp_path / "sin"


@pytest.fixture
def mixed(tmp_path, sinusoid):
    """The sinusoid sweep next to a 3-job Omniglot sweep (an experiment, inner learning rates, a long data path)."""
    for job, (lr, acc) in enumerate([("0.4", 0.5849), ("0.1", 0.9712), ("0.031622776601683794", 0.7)]):
        write_run(tmp_path / "omni" / f"{job}_algo.inner_lr={lr}",
                  ["experiment=maml_omniglot_5w1s", f"algo.inner_lr={lr}", f"paths.data_dir={DATA_PATH}"],
                  "omniglot", "acc", acc)
    return tmp_path


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures plot_curves saves, kept for inspection."""
    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: (figures.append(figure),
                                                                            save(figure, *args, **kwargs)))
    return figures


def test_a_single_validation_point_is_drawn_as_a_marker(sinusoid, tmp_path, saved_figures):
    plot_curves(curve_data(find_runs([sinusoid]), ["train/loss", "val/mse"]), tmp_path / "curves.png")
    (figure,) = saved_figures
    val_lines = figure.axes[1].get_lines()
    assert len(val_lines) == 4 and all(len(line.get_xdata()) == 1 for line in val_lines)
    assert all(line.get_marker() not in ("", "None", None) for axes in figure.axes for line in axes.get_lines())


def test_csv_has_each_column_once_and_the_algo_of_runs_not_overriding_it(mixed, tmp_path):
    report(parse_args([str(mixed), "--no-plot", "--out", str(tmp_path / "out")]))
    with open(tmp_path / "out" / "report.csv", newline="") as file:
        header, *rows = list(csv.reader(file))
    assert len(header) == len(set(header)) and header.count("algo") == 1
    assert len(rows) == 7  # one row per run, both datasets
    # the Omniglot runs set algo through their experiment: their value comes from results.json
    assert [row[header.index("algo")] for row in rows] == ["maml"] * 5 + ["fomaml"] * 2


def test_mixed_datasets_get_one_table_each_of_reasonable_width(mixed, tmp_path, capsys):
    out = report(parse_args([str(mixed), "--no-plot", "--out", str(tmp_path / "out")]))
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert [line for line in markdown.splitlines() if line.startswith("#")] == ["## omniglot", "## sinusoid"]
    headers = [line for line in markdown.splitlines() if line.startswith("| run |")]
    assert headers == ["| run | algo.inner_lr | test/acc % | val/acc % | wall_s |",
                       "| run | algo | dataset.shots | test/mse | val/mse | wall_s |"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "omniglot:" and "sinusoid:" in printed
    headers = [line.split()[:2] for line in printed if line.startswith("run ")]
    assert headers == [["run", "algo.inner_lr"], ["run", "algo"]]
    assert max(len(line) for line in printed if not line.startswith("wrote ")) <= 100
    assert [run.dataset() for run in out["runs"]] == ["omniglot"] * 3 + ["sinusoid"] * 4


def test_a_sort_metric_of_one_dataset_ranks_that_table_and_the_other_by_its_own(mixed, tmp_path):
    out = report(parse_args([str(mixed), "--sort", "test/mse", "--descending", "--no-plot", "--out", str(tmp_path)]))
    mse = [run.results["test/mse"] for run in out["runs"] if "test/mse" in run.results]
    acc = [run.results["test/acc"] for run in out["runs"] if "test/acc" in run.results]
    assert mse == sorted(mse, reverse=True) and acc == sorted(acc, reverse=True)


def test_long_override_values_are_cut_in_the_middle_in_tables_and_kept_whole_in_the_csv(mixed, tmp_path, capsys):
    write_run(mixed / "omni" / "3_algo.inner_lr=0.2", ["experiment=maml_omniglot_5w1s", "algo.inner_lr=0.2",
                                                        "paths.data_dir=/data"], "omniglot", "acc", 0.6)
    report(parse_args([str(mixed / "omni"), "--no-plot", "--out", str(tmp_path / "out")]))
    printed = capsys.readouterr().out
    assert "/scratch/so…luation_sets" in printed and DATA_PATH not in printed
    assert DATA_PATH in (tmp_path / "out" / "report.csv").read_text()


def test_accuracies_show_as_percentages_in_the_tables_and_as_fractions_in_the_csv(mixed, tmp_path, capsys):
    report(parse_args([str(mixed / "omni"), "--no-plot", "--out", str(tmp_path / "out")]))
    table = [line.split("|")[1:-1] for line in (tmp_path / "out" / "report.md").read_text().splitlines()]
    assert [cell.strip() for cell in table[0]][-3:] == ["test/acc %", "val/acc %", "wall_s"]
    # percent, the CI in points: 0.9712 ± 0.0123 reads 97.12 ± 1.2…
    assert [row[-3].strip()[:11] for row in table[2:]] == ["97.12 ± 1.2", "70.00 ± 1.2", "58.49 ± 1.2"]
    assert "97.12 ± 1.2" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert [float(row["test/acc"]) for row in rows] == [0.9712, 0.7, 0.5849]
    assert {row["test/acc_ci95"] for row in rows} == {"0.0123"}


def test_a_mixed_folder_plots_without_warnings_and_the_png_holds_the_legend(mixed, tmp_path, saved_figures):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = report(parse_args([str(mixed), "--out", str(tmp_path / "out")]))
    assert list(out["curves"]) == ["train/loss", "val/acc", "val/mse"]
    (figure,) = saved_figures
    drawn = figure.get_tightbbox()  # inches: everything drawn, legends included
    (legend,) = [*figure.legends, *(axes.get_legend() for axes in figure.axes if axes.get_legend())]
    assert len(legend.get_texts()) == 7
    with Image.open(tmp_path / "out" / "curves.png") as png:
        width, height = png.size
    assert width / 80 >= drawn.width and height / 80 >= drawn.height  # saved at dpi=80: nothing cut off
