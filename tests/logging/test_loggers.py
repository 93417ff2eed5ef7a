"""The logger options combine in any order; a tracker without its package fails at start-up naming the extra; one
run with every local tracker on, end to end."""

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from metarun.errors import RunError
from metarun.logging import build_loggers
from tests.conftest import TINY, compose_config, run_cli
from tests.logging.trackers import mlflow_run, tensorboard_run

TRACKERS = ["wandb", "tensorboard", "mlflow"]


def switches(logger):
    """(jsonl, console, wandb mode, tensorboard on, mlflow on) of a composed ``logger``."""
    return logger.jsonl, logger.console, logger.wandb.mode, logger.tensorboard.enabled, logger.mlflow.enabled


def test_logger_options_turn_on_each_in_any_order():
    assert switches(compose_config().logger) == (True, True, "disabled", False, False)  # logger=local
    every = switches(compose_config(["logger=[local,wandb,tensorboard,mlflow]"]).logger)
    assert every == (True, True, "online", True, True)
    assert switches(compose_config(["logger=[mlflow,tensorboard,wandb,local]"]).logger) == every
    assert switches(compose_config(["logger=[none,tensorboard]"]).logger) == (False, False, "disabled", True, False)
    for tracker in TRACKERS:  # each alone keeps the local logs
        assert compose_config([f"logger={tracker}"]).logger == compose_config([f"logger=[local,{tracker}]"]).logger


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_tracker_without_its_package_fails_before_any_logger_starts(tracker, tmp_path, without):
    without(tracker)
    cfg = compose_config([f"logger={tracker}"], output_dir=tmp_path)
    with pytest.raises(RunError, match=rf'^logger={tracker} needs the {tracker} package: pip install '
                                       rf'"metarun\[{tracker}\]"$'):
        build_loggers(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_local_loggers_need_no_tracker_package(tmp_path, without):
    for tracker in TRACKERS:
        without(tracker)
    loggers = build_loggers(compose_config(["logger=local", "logger.console=false"], output_dir=tmp_path), tmp_path)
    loggers[0].log(1, {"train/loss": 1.0})
    loggers[0].finish(None)
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "train/loss": 1.0}


def test_cli_with_logger_wandb_but_no_wandb_exits_in_one_line_before_training(tmp_path):
    command = "import sys; sys.modules['wandb'] = None; sys.argv[0] = 'metarun'; from metarun.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", command, "logger=wandb", *TINY, f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == 'metarun: error: logger=wandb needs the wandb package: pip install "metarun[wandb]"'
    assert not (tmp_path / "metrics.jsonl").exists()


def test_sweep_job_logs_to_local_files_tensorboard_and_mlflow(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)  # MLflow's own variable names the store too
    sweep = tmp_path / "sweep"
    out = run_cli("-m", "logger=[local,tensorboard,mlflow]", *TINY, f"hydra.sweep.dir={sweep}", "seed=1")
    assert out.returncode == 0, out.stderr
    (results_file,) = sweep.glob("*/results.json")
    run_dir, results = results_file.parent, json.loads(results_file.read_text())
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    board, tracked = tensorboard_run(run_dir)["scalars"], mlflow_run(mlflow_store, run_dir)
    assert board["train/loss"] == [(m["step"], pytest.approx(m["train/loss"])) for m in local]
    assert tracked["history"]["train/loss"] == [(m["step"], pytest.approx(m["train/loss"])) for m in local]
    final = [(results["iterations"], pytest.approx(results["test/mse"]))]
    assert board["test/mse"] == final and tracked["history"]["test/mse"] == final
    hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
    assert tracked["tags"]["group"] == sweep.name  # what the sweep's runs share
    assert tracked["info"].run_name == hydra.job.override_dirname  # the overrides, as wandb names it
    assert tracked["artifacts"] == ["checkpoints/best.pt"] and tracked["params"]["seed"] == "1"
