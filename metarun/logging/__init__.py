"""Where metrics go. A logger has ``log(step, metrics)`` and ``finish(results)``; ``build_loggers`` picks them.

``finish`` is always called, with the final results of a finished run or ``None`` when the run failed, so a
backend that holds a connection (wandb, MLflow) is closed whatever happens. The trackers (wandb, TensorBoard,
MLflow) each need the package of their name, an extra of metarun's, and are imported only when on.
"""

import importlib
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from metarun.errors import RunError
from metarun.logging.jsonl import JsonlWriter
from metarun.logging.summary import ConsoleSummary


def build_loggers(cfg: DictConfig, run_dir: Path, start: int = 0) -> list:
    """The loggers that ``cfg.logger`` turns on for the run ``cfg`` (the full config), writing into ``run_dir``;
    a run resumed from iteration ``start`` keeps only the metrics logged up to it."""
    logger = cfg.logger
    # every tracker's package is checked before any logger starts: a missing one stops the run with nothing to undo
    wandb, tensorboard, mlflow = (trackers(logger).get(name) for name in ("wandb", "tensorboard", "mlflow"))
    loggers = []
    try:
        if logger.jsonl:
            loggers.append(JsonlWriter(run_dir / "metrics.jsonl", start))
        if logger.console:
            loggers.append(ConsoleSummary())
        if wandb:
            loggers.append(wandb.WandbLogger(cfg, run_dir))
        if tensorboard:
            loggers.append(tensorboard.TensorBoardLogger(cfg, run_dir, start))
        if mlflow:
            loggers.append(mlflow.MlflowLogger(cfg, run_dir))
    except BaseException:
        for started in loggers:  # a tracker that did start is closed (marked failed), as after a failed run
            started.finish(None)
        raise
    return loggers


def trackers(logger: DictConfig) -> dict:
    """``{name: module}`` of the trackers ``logger`` (``cfg.logger``) turns on; a RunError naming the extra to
    install when one's package is missing (``train.run`` asks at start-up, before the data is loaded)."""
    on = {"wandb": logger.wandb.mode != "disabled", "tensorboard": logger.tensorboard.enabled,
          "mlflow": logger.mlflow.enabled}
    return {name: tracker(name) for name, enabled in on.items() if enabled}


def tracker(name: str) -> ModuleType:
    """``metarun.logging.<name>``, which needs the package ``name``: a RunError saying how to install it when it
    is missing."""
    try:
        return importlib.import_module(f"metarun.logging.{name}")
    except ModuleNotFoundError as err:
        if err.name != name and not str(err.name).startswith(f"{name}."):
            raise  # a module of metarun's own, or a broken install of the package: the traceback says which
        raise RunError(f'logger={name} needs the {name} package: pip install "metarun[{name}]"') from None
