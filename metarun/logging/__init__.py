"""Where metrics go. A logger has ``log(step, metrics)`` and ``finish(results)``; ``build_loggers`` picks them.

``finish`` is always called, with the final results of a finished run or ``None`` when the run failed, so a
backend that holds a connection (wandb, MLflow) is closed whatever happens. The trackers (wandb, TensorBoard,
MLflow) each need the package of their name, an extra of metarun's, and are imported only when on; each has a
``check(logger)`` of where it writes, which ``trackers`` calls.
"""

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf

from metarun.logging.jsonl import JsonlWriter
from metarun.logging.summary import ConsoleSummary
from metarun.utils.errors import RunError, first_line

# the key under ``logger`` that turns each tracker on; ``disabled`` (wandb's mode) or false leaves it off
SWITCHES = {"wandb": "wandb.mode", "tensorboard": "tensorboard.enabled", "mlflow": "mlflow.enabled"}


def build_loggers(cfg: DictConfig, run_dir: Path, start: int = 0) -> list:
    """The loggers that ``cfg.logger`` turns on for the run ``cfg`` (the full config), writing into ``run_dir``;
    a run resumed from iteration ``start`` keeps only the metrics logged up to it."""
    logger = cfg.logger
    # every tracker's package is imported before any logger starts: a failure stops the run with nothing to undo
    # (``check_trackers`` checked them, and where they write, before the data was loaded)
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
    """``{name: module}`` of the trackers ``logger`` (the run config's ``cfg.logger``) turns on; a one-line RunError
    when one's package is missing or fails to import."""
    found = {}
    for name, key in SWITCHES.items():
        value = str(OmegaConf.select(logger, key)).lower()
        if value not in ("disabled", "false"):
            found[name] = tracker(name, f"logger.{key}={value}")
    return found


def check_trackers(logger: DictConfig) -> None:
    """Check that each tracker ``logger`` turns on can start: its package imports and its store or folder can be
    written. ``train.run`` asks at start-up, before the data is loaded; a one-line RunError names what stops one
    and the fix."""
    for module in trackers(logger).values():
        module.check(logger)


def tracker(name: str, switch: str) -> ModuleType:
    """``metarun.logging.<name>``, which needs the package ``name`` and is on by ``switch`` (``logger.<key>=<value>``):
    a RunError saying how to install the package when it is missing, or why it fails when it is installed."""
    if importlib.util.find_spec(name) is None:
        raise RunError(f'logger={name} needs the {name} package: pip install "metarun[{name}]"')
    try:
        return importlib.import_module(f"metarun.logging.{name}")
    except Exception as err:
        if raised_in_metarun(err):
            raise  # metarun's own module is wrong: its traceback says where
        raise RunError(f"{switch} needs the {name} package, which is installed but fails to import "
                       f"({err.__class__.__name__}: {first_line(err)}); repair it (pip check names broken "
                       "requirements) or turn that logger off") from err


def raised_in_metarun(err: Exception) -> bool:
    """Whether ``err`` comes from metarun's own code: the module an ImportError names, else where it was raised."""
    module = err.name if isinstance(err, ImportError) and err.name else None
    if module is None:
        frame = err.__traceback__
        while frame.tb_next is not None:
            frame = frame.tb_next
        module = frame.tb_frame.f_globals.get("__name__", "")
    return module.partition(".")[0] == "metarun"
