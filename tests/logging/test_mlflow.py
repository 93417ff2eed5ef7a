"""MLflow for real, in a SQLite store: params, metric history with steps, final results and the checkpoint artifact
read back with MlflowClient."""

import pytest

from metarun.errors import RunError
from metarun.logging import build_loggers
from tests.conftest import compose_config
from tests.logging.trackers import drive, mlflow_run


def mlflow_config(store, run_dir, *overrides):
    """The config of a run that logs to MLflow only, in ``store``."""
    return compose_config(["logger=[none,mlflow]", f"logger.mlflow.tracking_uri={store}", *overrides],
                          output_dir=run_dir)


def test_params_metric_history_results_and_best_checkpoint(tmp_path, mlflow_store):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"weights")
    drive(build_loggers(mlflow_config(mlflow_store, tmp_path, "algo.inner_lr=0.02"), tmp_path))
    recorded = mlflow_run(mlflow_store, tmp_path)
    params = recorded["params"]
    assert (params["algo.name"], params["algo.inner_lr"], params["model.hidden"]) == ("maml", "0.02", "[40, 40]")
    assert params["paths.output_dir"] == str(tmp_path)  # resolved
    history = recorded["history"]
    assert history["train/loss"] == [(10, 1.5), (20, 0.9)]
    assert history["val/mse"] == [(10, 1.2), (20, 0.8)]  # not again with the results
    assert history["test/mse"] == [(20, 0.7)] and history["wall_s"] == [(20, 1.5)]
    assert not {"val/mse_by_step", "algo"} & set(history)
    assert recorded["artifacts"] == ["checkpoints/best.pt"]
    info = recorded["info"]
    assert info.status == "FINISHED" and info.run_name == "maml-sinusoid"  # no Hydra job: the fallback name
    # artifacts beside the database, not in ./mlruns wherever the run started
    assert info.artifact_uri.startswith(mlflow_store.removeprefix("sqlite:///").replace("mlflow.db", "mlartifacts"))


def test_a_failed_run_is_marked_failed_without_artifact(tmp_path, mlflow_store):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"weights")
    (logger,) = build_loggers(mlflow_config(mlflow_store, tmp_path, "logger.mlflow.experiment=failures"), tmp_path)
    logger.log(10, {"train/loss": 2.0})
    logger.finish(None)
    recorded = mlflow_run(mlflow_store, tmp_path)
    assert recorded["info"].status == "FAILED" and recorded["history"] == {"train/loss": [(10, 2.0)]}
    assert recorded["artifacts"] == []


def test_default_store_is_a_sqlite_database_beside_the_runs_unless_the_environment_names_one(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_config(["logger=mlflow"]).logger.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert compose_config(["logger=mlflow"]).logger.mlflow.tracking_uri == "http://mlflow.example.org:5000"


def test_an_unreachable_server_fails_at_start_in_one_line_and_closes_the_loggers_started(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = mlflow_config("http://127.0.0.1:9", tmp_path, "logger.jsonl=true")
    with pytest.raises(RunError, match=r"^MLflow could not start a run in http://127\.0\.0\.1:9 \(.*\); start the "
                                       r"server or set logger\.mlflow\.tracking_uri$"):
        build_loggers(cfg, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # opened, then closed again
