"""Where metrics go. A logger has ``log(step, metrics)`` and ``finish(results)``; ``build_loggers`` picks them.

``finish`` is always called, with the final results of a finished run or ``None`` when the run failed, so a
backend that holds a connection (wandb) is closed whatever happens.
"""

from pathlib import Path

from metarun.logging.jsonl import JsonlWriter


def build_loggers(cfg, run_dir: Path) -> list:
    """The loggers that ``cfg`` (the ``logger`` group) turns on, writing into ``run_dir``."""
    return [JsonlWriter(run_dir / "metrics.jsonl")] if cfg.jsonl else []
