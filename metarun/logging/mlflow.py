"""MLflow tracking: one MLflow run per metarun run, in a store the runs share.

By default the store is the SQLite database ``outputs/mlflow.db`` with artifacts in ``outputs/mlartifacts``
(MLflow's file store is deprecated); ``logger.mlflow.tracking_uri`` points elsewhere or at a server. Params =
the resolved config flattened to dotted keys; every scalar metric is logged at its step, the final results at
the last iteration, and ``checkpoints/best.pt`` as an artifact. Run name = the overrides; the runs of a sweep
share the tag ``group`` = the sweep directory's name (else the experiment preset), so the UI can filter
(``tags.group = '...'``) and group by it. A resumed run is a new MLflow run with the same ``run_dir`` tag.
"""

import fcntl
import os
import sqlite3
import time
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from mlflow import environment_variables
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.exc import SQLAlchemyError

from metarun.logging.destinations import unwritable
from metarun.logging.identity import run_identity
from metarun.logging.scalars import ScalarSeries
from metarun.utils.errors import RunError, first_line, writing

SQLITE = "sqlite:///"
# the jobs of a sweep hold the database for milliseconds at a time: a lock held longer is another process's
LOCK_WAIT_S = 5.0


class MlflowLogger(ScalarSeries):
    """Logs to one MLflow run; ``finish`` ends it FINISHED, or FAILED when the run failed."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        """Start the run for the full config ``cfg`` in ``logger.mlflow``'s store and experiment."""
        super().__init__()
        self.options, self.run_dir = cfg.logger.mlflow, run_dir
        uri, identity = self.options.tracking_uri, run_identity(cfg)
        tags = {"group": identity["group"], "run_dir": str(run_dir)}
        try:
            self.client = MlflowClient(uri)
            experiment = experiment_id(self.client, self.options.experiment, database(uri))
            self.run_id = self.client.create_run(experiment, run_name=identity["name"],
                                                 tags={k: v for k, v in tags.items() if v is not None}).info.run_id
        except (MlflowException, SQLAlchemyError, OSError) as err:  # a store that changed since ``check``
            raise RunError(f"MLflow could not start a run in {uri} ({first_line(err)}); start the server or set "
                           "logger.mlflow.tracking_uri") from err
        params = flatten(OmegaConf.to_container(cfg, resolve=True))
        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def write(self, step: int, values: dict) -> None:
        """One batch of metrics at ``step``."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, results) -> None:
        """Log the final ``results`` and the best checkpoint, then end the run (FAILED when ``results`` is None)."""
        try:
            if results is not None:
                self.write_results(results)
                best = self.run_dir / "checkpoints" / "best.pt"
                if self.options.log_artifact and best.is_file():
                    self.client.log_artifact(self.run_id, str(best), "checkpoints")
        finally:
            self.client.set_terminated(self.run_id, "FINISHED" if results is not None else "FAILED")


def check(logger: DictConfig) -> None:
    """A one-line RunError, before the run starts, when the store ``logger.mlflow.tracking_uri`` names on this
    machine cannot be opened: MLflow would retry a SQLite file it cannot open for about two minutes, then print a
    traceback."""
    uri = logger.mlflow.tracking_uri
    if db := database(uri):
        problem = database_problem(db)
    elif folder := file_store(uri):
        problem = folder_problem(folder)
    else:
        return  # a server's: tried when the run starts, where MLflow's retries ride out a blip
    if problem:
        raise RunError(f"logger.mlflow.tracking_uri={uri} cannot be opened: {problem}; set it to a SQLite file this "
                       "process can write (sqlite:///outputs/mlflow.db by default) or a server's URL")


def database_problem(db: Path) -> Optional[str]:
    """Why MLflow cannot open the SQLite database ``db`` (made where missing), or None; nothing is made."""
    if db.is_dir():
        return f"{db} is a folder, not a SQLite database file"
    problem = unwritable(db.parent)  # where a new database, its journal and the lock beside it go
    if problem or not db.exists():
        return problem
    if not os.access(db, os.W_OK):
        return f"{db} is read-only for this process"
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=LOCK_WAIT_S)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        held = "locked" in str(err)
        return f"{db} is {'locked by another process' if held else 'not a SQLite database'} ({err})"
    return None


def file_store(uri: str) -> Optional[Path]:
    """The folder of an MLflow file store (a path, or a ``file:`` URI), else None."""
    address = urlparse(uri)
    if address.scheme not in ("", "file"):
        return None  # a server's, or a database's
    return Path(address.path if address.scheme == "file" else uri)


def folder_problem(folder: Path) -> Optional[str]:
    """Why MLflow cannot keep its file store in ``folder``, or None; nothing is made."""
    allowed = getattr(environment_variables, "MLFLOW_ALLOW_FILE_STORE", None)  # MLflow 3 refuses file stores
    if allowed is not None and not allowed.get():
        return "a plain path is MLflow's file store, which this MLflow refuses unless MLFLOW_ALLOW_FILE_STORE=true"
    if folder.is_dir() and any(folder.iterdir()) and not (folder / ".trash").is_dir():  # every file store has one
        return f"{folder} is a folder that holds other files, not an MLflow file store"
    return unwritable(folder)


def database(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` store (relative paths from where metarun starts), else None."""
    return Path(uri[len(SQLITE):]).resolve() if uri.startswith(SQLITE) else None


def experiment_id(client: MlflowClient, name: str, db: Optional[Path]) -> str:
    """The id of experiment ``name``, created when new: in a SQLite store with its artifacts beside the database
    (MLflow's default, ./mlruns, would land wherever each run starts)."""
    with locked(db) if db else nullcontext():
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(name, artifact_location=str(db.parent / "mlartifacts") if db else None)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)  # a server's: another job of the sweep was first
    if found.lifecycle_stage == "deleted":
        raise RunError(f"the MLflow experiment {name} is deleted; restore it (mlflow experiments restore "
                       f"--experiment-id {found.experiment_id}) or set logger.mlflow.experiment=<another name>")
    return found.experiment_id


@contextmanager
def locked(db: Path):
    """Hold ``<db>.lock``: the parallel jobs of a sweep would otherwise all create a new database's tables and
    the experiment at once."""
    with writing(db):  # a read-only folder: named, not an errno
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db.with_name(db.name + ".lock"), "a")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
