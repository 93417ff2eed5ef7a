"""Where metrics go. A logger has ``log(step, metrics)`` and ``finish(results)``; ``build_loggers`` picks them.

``finish`` is always called, with the final results of a finished run or ``None`` when the run failed, so a
backend that holds a connection (wandb) is closed whatever happens.
"""

from pathlib import Path

from omegaconf import DictConfig

from metarun.logging.jsonl import JsonlWriter
from metarun.logging.summary import ConsoleSummary


def build_loggers(cfg: DictConfig, run_dir: Path, start: int = 0) -> list:
    """The loggers that ``cfg.logger`` turns on for the run ``cfg`` (the full config), writing into ``run_dir``;
    a run resumed from iteration ``start`` keeps only the metrics logged up to it."""
    loggers = [JsonlWriter(run_dir / "metrics.jsonl", start)] if cfg.logger.jsonl else []
    if cfg.logger.console:
        loggers.append(ConsoleSummary())
    if cfg.logger.wandb.mode != "disabled":
        # imported here: wandb takes a second to import and most runs do not use it
        from metarun.logging.wandb import WandbLogger
        loggers.append(WandbLogger(cfg, run_dir))
    return loggers
