"""MLflow for real, in a SQLite store: params, metric history with steps, final results and the checkpoint artifact
read back with MlflowClient; a store that cannot be opened stops the start in one line."""

import re
import sqlite3
import subprocess
import sys
import time

import pytest

from metarun.logging import build_loggers
from metarun.logging.mlflow import LOCK_WAIT_S
from metarun.utils.errors import RunError
from tests.conftest import compose_config
from tests.logging.trackers import drive, mlflow_run, snapshot, start


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


def text_file(path):
    path.write_text("my notes\n")


def folder_of_files(path):
    path.mkdir()
    text_file(path / "notes.txt")


def empty_database(path):
    sqlite3.connect(path).close()


# what is at <tmp>/store/x, the tracking URI, the cause named, and whether MLflow's file store is allowed
STORES = {
    "a text file as database": (text_file, "sqlite:///{x}", r"{x} is not a SQLite database \(file is not a database\)",
                                False),
    "a folder as database": (folder_of_files, "sqlite:///{x}", "{x} is a folder, not a SQLite database file", False),
    "a database below a file": (text_file, "sqlite:///{x}/mlflow.db", "{x} is not a folder", False),
    "a plain path": (folder_of_files, "{x}", "a plain path is MLflow's file store, which this MLflow refuses unless "
                                             "MLFLOW_ALLOW_FILE_STORE=true", False),
    "a file as file store": (text_file, "file://{x}", "{x} is not a folder", True),
    "a folder that is no store": (folder_of_files, "{x}", "{x} is a folder that holds other files, not an MLflow "
                                                          "file store", True),
}


@pytest.mark.parametrize("case", STORES)
def test_a_store_that_cannot_be_opened_stops_the_start_in_one_line_before_the_data(case, tmp_path, monkeypatch):
    make, uri, cause, file_store = STORES[case]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", str(file_store).lower())
    refused_store(tmp_path, make, uri, cause)


@pytest.mark.parametrize("make, uri", [(folder_of_files, "sqlite:///{x}/mlflow.db"), (empty_database, "sqlite:///{x}")])
def test_a_read_only_store_stops_the_start_in_one_line_before_the_data(make, uri, tmp_path):
    refused_store(tmp_path, make, uri, "{x} is read-only for this process", read_only=True)


def refused_store(tmp_path, make, uri: str, cause: str, read_only: bool = False) -> None:
    """Start a run that logs to ``uri`` (``{x}``: <tmp>/store/x, which ``make`` makes): it must stop before the data
    is loaded, in one line naming the key, the URI and ``cause`` (a pattern), leaving the store and no run behind."""
    x = tmp_path / "store" / "x"
    x.parent.mkdir()
    make(x)
    before, uri = snapshot(x.parent), uri.format(x=x)
    out = start(tmp_path / "run", "logger=[local,mlflow]", f"logger.mlflow.tracking_uri={uri}",
                **({"read_only": x} if read_only else {}))
    assert out.returncode == 1
    assert re.fullmatch(rf"metarun: error: logger\.mlflow\.tracking_uri={re.escape(uri)} cannot be opened: "
                        rf"{cause.format(x=re.escape(str(x)))}; set it to a SQLite file this process can write "
                        r"\(sqlite:///outputs/mlflow\.db by default\) or a server's URL\n", out.stderr), out.stderr
    assert snapshot(x.parent) == before and not (tmp_path / "run").exists()  # no database, lock or run made


def test_a_database_locked_by_another_process_stops_the_start_within_seconds(tmp_path):
    db = tmp_path / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        started = time.perf_counter()
        out = start(tmp_path / "run", "logger=[local,mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{db}")
        waited = time.perf_counter() - started
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1
    assert out.stderr == (f"metarun: error: logger.mlflow.tracking_uri=sqlite:///{db} cannot be opened: {db} is locked "
                          "by another process (database is locked); set it to a SQLite file this process can write "
                          "(sqlite:///outputs/mlflow.db by default) or a server's URL\n")
    # MLflow alone would retry the locked file for minutes; the check waits LOCK_WAIT_S, plus the start-up
    assert waited < LOCK_WAIT_S + 60
    # the holder's database and journal only: no lock file of metarun's, no run directory
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db-journal"]


# holds an exclusive lock on the database sys.argv[1] until killed
LOCK_HOLDER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("CREATE TABLE t (x)")
connection.execute("BEGIN EXCLUSIVE")
connection.execute("INSERT INTO t VALUES (1)")
print("locked", flush=True)
time.sleep(600)
"""
