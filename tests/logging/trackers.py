"""A fake run to drive the loggers with, readers that get back what TensorBoard and MLflow recorded, and a start of
the command that cannot get past its checks."""

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY

# what train.run logs: train metrics every log_every, validation every val_every, a curve that no tracker plots
STEPS = {
    10: {"train/loss": 1.5, "train/mse": 1.5, "train/lr": 0.001, "val/mse": 1.2, "val/mse_ci95": 0.2,
         "val/mse_by_step": [2.0, 1.2]},
    20: {"train/loss": 0.9, "train/mse": 0.9, "train/lr": 0.001, "val/mse": 0.8, "val/mse_ci95": 0.1,
         "val/mse_by_step": [2.0, 0.8]},
}
RESULTS = {"test/mse": 0.7, "test/mse_ci95": 0.05, "test/mse_by_step": [2.0, 0.7], "val/mse": 0.8,
           "val/mse_ci95": 0.1, "best/iteration": 20, "algo": "maml", "iterations": 20, "wall_s": 1.5}


def drive(loggers, steps=STEPS, results=RESULTS) -> None:
    """Log ``steps`` to each logger, then finish them with ``results``."""
    for step, metrics in steps.items():
        for logger in loggers:
            logger.log(step, metrics)
    for logger in loggers:
        logger.finish(results)


def tensorboard_run(run_dir: Path) -> dict:
    """``{"scalars": {tag: [(step, value)]}, "config": the latest config text}`` from run_dir/tensorboard."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    config = events.Tensors("config/text_summary")[-1]  # a resumed run records it again
    return {"scalars": scalars, "config": config.tensor_proto.string_val[0].decode()}


def mlflow_run(uri: str, run_dir: Path) -> dict:
    """The MLflow run that logged ``run_dir``: info, params, tags, ``history`` {metric: [(step, value)]} and
    the artifact paths."""
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.run_dir = '{run_dir}'")
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics}
    artifacts = [a.path for folder in client.list_artifacts(run.info.run_id)
                 for a in ([folder] if not folder.is_dir else client.list_artifacts(run.info.run_id, folder.path))]
    return {"info": run.info, "params": run.data.params, "tags": run.data.tags, "history": history,
            "artifacts": artifacts}


# os.access says ``folder`` (sys.argv[1]) cannot be written: root writes anywhere, so chmod cannot make one read-only
READ_ONLY = ("import os, sys; folder = sys.argv.pop(1); real = os.access; "
             "os.access = lambda path, mode, **kw: not (str(path).startswith(folder) and mode & os.W_OK) "
             "and real(path, mode, **kw); ")


def start(run_dir: Path, *overrides, read_only: Path = Path("/nowhere")) -> subprocess.CompletedProcess:
    """``metarun`` with ``overrides`` in ``run_dir``, on image folders that do not exist: a logger checked at
    start-up stops it first, where one checked after the data fails on the data instead; ``read_only`` is a
    folder this process may not write into."""
    missing = run_dir.parent / "no-images"
    data = ["dataset=imagefolder", *(f"dataset.{split}=[{missing}]" for split in ("train", "val", "test"))]
    command = READ_ONLY + "sys.argv[0] = 'metarun'; from metarun.runner.cli import main; main()"
    return subprocess.run([sys.executable, "-c", command, str(read_only), *overrides, *data, *TINY,
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True)


def snapshot(folder: Path) -> dict:
    """Every path below ``folder`` with its bytes (None for a folder): what a refused start must leave as it was."""
    return {path: None if path.is_dir() else path.read_bytes() for path in sorted(folder.rglob("*"))}
