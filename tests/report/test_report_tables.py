"""metarun-report on run directories written here (no training): mixed datasets, accuracies, CSV columns, plots."""

import csv
import json
import warnings

import pytest

from metarun.report.cli import parse_args, report
from metarun.report.plots import curve_data, plot_curves
from metarun.report.runs import find_runs
from tests.report.conftest import DATA_PATH, report_of, write_run

pytest.importorskip("matplotlib.figure", reason="the report extra (matplotlib) is not installed")
Image = pytest.importorskip("PIL.Image")


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


def test_runs_meta_tested_on_several_sources_get_the_average_rank_over_sources(tmp_path, capsys):
    """Meta-Dataset's tables rank methods per source and average the ranks: a run best on two of three sources and
    tied on the third ranks 1.17 (1, 1, 1.5), the other 1.83."""
    per_source = {"a": {"aircraft": 0.6, "omniglot": 0.9, "dtd": 0.5}, "b": {"aircraft": 0.5, "omniglot": 0.8, "dtd": 0.5}}
    for name, accuracies in per_source.items():
        path = tmp_path / "md" / name
        write_run(path, [f"algo={'protonet' if name == 'a' else 'fomaml'}"], "metadataset", "acc", 0.7)
        results = json.loads((path / "results.json").read_text())
        results["test/sources"] = list(accuracies)
        for source, accuracy in accuracies.items():
            results[f"test/{source}/acc"], results[f"test/{source}/acc_ci95"] = accuracy, 0.01
        (path / "results.json").write_text(json.dumps(results))
    assert report_of(tmp_path / "md", "--no-plot") == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert "avg" in header and header[header.index("avg") + 1] == "rank"
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert "1.17" in rows["a"] and "1.83" in rows["b"], lines
    assert "test/aircraft/acc" in lines[0] and "test/dtd/acc" in lines[0]
