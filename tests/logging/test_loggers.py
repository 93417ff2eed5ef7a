"""The logger options combine in any order; a tracker without its package, with a package that fails to import or
with a folder it cannot write fails at start-up in one line; one run with every local tracker on, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metarun.logging import build_loggers, tracker
from metarun.utils.errors import RunError
from tests.conftest import TINY, compose_config, run_cli
from tests.logging.trackers import mlflow_run, start, tensorboard_run

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
    command = "import sys; sys.modules['wandb'] = None; sys.argv[0] = 'metarun'; from metarun.runner.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", command, "logger=wandb", *TINY, f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == 'metarun: error: logger=wandb needs the wandb package: pip install "metarun[wandb]"'
    assert not (tmp_path / "metrics.jsonl").exists()


# a package of a tracker's that is installed but breaks on import: its __init__.py, the cause the line names, and
# the switch that turned the tracker on
BROKEN = {
    "mlflow": ('raise ImportError("cannot import name \'Field\' from \'pydantic\'")',
               "ImportError: cannot import name 'Field' from 'pydantic'", "logger.mlflow.enabled=true"),
    "tensorboard": ('raise RuntimeError("protobuf 3 is too old")', "RuntimeError: protobuf 3 is too old",
                    "logger.tensorboard.enabled=true"),
    "wandb": ("import a_missing_dependency", "ModuleNotFoundError: No module named 'a_missing_dependency'",
              "logger.wandb.mode=online"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_tracker_package_that_fails_to_import_stops_the_start_in_one_line(name, tmp_path, monkeypatch):
    source, cause, switch = BROKEN[name]
    (tmp_path / "site" / name).mkdir(parents=True)
    (tmp_path / "site" / name / "__init__.py").write_text(source + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # found before the real one
    out = start(tmp_path / "run", f"logger=[local,{name}]")
    assert out.returncode == 1
    assert out.stderr == (f"metarun: error: {switch} needs the {name} package, which is installed but fails to import "
                          f"({cause}); repair it (pip check names broken requirements) or turn that logger off\n")
    assert not (tmp_path / "run").exists()


def test_an_error_in_metarun_s_own_tracker_module_keeps_its_traceback(monkeypatch):
    def import_module(name):  # as if metarun/logging/mlflow.py had a bug
        exec(compile("undefined_name", "metarun/logging/mlflow.py", "exec"), {"__name__": "metarun.logging.mlflow"})

    monkeypatch.setattr("metarun.logging.importlib.import_module", import_module)
    with pytest.raises(NameError, match="undefined_name"):
        tracker("mlflow", "logger.mlflow.enabled=true")


# what stands where a tracker's folder goes, and the problem named
BLOCKERS = {"a file": (lambda path: path.write_text(""), "is not a folder"),
            "a read-only folder": (Path.mkdir, "is read-only for this process")}


@pytest.mark.parametrize("name, switch", [("tensorboard", "logger.tensorboard.enabled=true"),
                                          ("wandb", "logger.wandb.mode=offline")])
@pytest.mark.parametrize("blocker", BLOCKERS)
def test_a_tracker_folder_that_cannot_be_written_stops_the_start_in_one_line(name, switch, blocker, tmp_path,
                                                                            no_wandb_login):
    make, problem = BLOCKERS[blocker]
    run_dir, folder = tmp_path / "run", tmp_path / "run" / name
    run_dir.mkdir()
    make(folder)
    # read-only as os.access sees it (a file is refused before its permissions are asked)
    out = start(run_dir, f"logger=[local,{name}]", "logger.wandb.mode=offline", read_only=folder)
    assert out.returncode == 1
    assert out.stderr == (f"metarun: error: {switch} writes into {folder}, but {folder} {problem}; move that away or "
                          "make it writable, set hydra.run.dir elsewhere, or turn the tracker off\n")
    assert list(run_dir.iterdir()) == [folder]  # nothing written beside it


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
