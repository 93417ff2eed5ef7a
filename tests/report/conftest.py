"""Run directories written here as metarun writes them (no training), for the report's tests."""

import json

import pytest

from metarun.report.cli import main

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
    Figure = pytest.importorskip("matplotlib.figure", reason="the report extra (matplotlib) is not installed").Figure
    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: (figures.append(figure),
                                                                            save(figure, *args, **kwargs)))
    return figures


def report_of(*args) -> int:
    """``metarun-report ARGS``'s exit status, run in this process."""
    try:
        main([str(arg) for arg in args])
    except SystemExit as stop:
        return stop.code
    return 0
