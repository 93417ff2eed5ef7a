"""Weights & Biases tracking: one wandb run per metarun run, its identity derived from the config and the sweep.

The run config is the resolved config; every scalar metric is logged at its step; the final results go to the
run summary. Name = the overrides (``hydra.job.override_dirname``), group = the multirun sweep directory (or
the experiment preset), tags = algo, dataset, ways, shots, model. Offline runs land in ``<run dir>/wandb/``.
"""

import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import wandb
from omegaconf import DictConfig, OmegaConf

from metarun.logging import identity
from metarun.logging.destinations import check_folder, run_folder

FOLDER = "wandb"  # what wandb makes in the ``dir`` it is given (the run directory) for its files


def check(logger: DictConfig) -> None:
    """A one-line RunError, before the run starts, when wandb's folder cannot be written (online runs keep files
    there too)."""
    check_folder(f"logger.wandb.mode={logger.wandb.mode}", run_folder(logger) / FOLDER)


def has_credentials() -> bool:
    """Whether wandb can log in without a prompt: a key or token in the environment, or a ``wandb login`` netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_identity(cfg: DictConfig) -> dict:
    """wandb's ``name``, ``group``, ``tags`` and ``job_type`` for ``cfg``; explicit ``logger.wandb`` values win."""
    derived, own = identity.run_identity(cfg), cfg.logger.wandb
    return {**derived, "name": own.name or derived["name"], "group": own.group or derived["group"],
            "tags": [*derived["tags"], *own.tags]}


class WandbLogger:
    """Logs to a wandb run; ``finish`` writes the summary, optionally the checkpoint artifact, and always closes it."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        """Start the run for the full config ``cfg`` with its files under ``run_dir/wandb``."""
        self.options, self.run_dir = cfg.logger.wandb, run_dir
        mode = self.options.mode
        if mode == "online" and not has_credentials():
            mode = "offline"
            print("metarun: wandb has no API key or login; logging offline — upload later with "
                  f"`wandb sync {run_dir}/wandb/offline-run-*`", file=sys.stderr)
        kwargs = dict(project=self.options.project, entity=self.options.entity, dir=str(run_dir),
                      config=OmegaConf.to_container(cfg, resolve=True), **run_identity(cfg))
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as err:  # noqa: BLE001 — an unreachable server must not cost the run; offline keeps the data
            if mode != "online":
                raise
            print(f"metarun: wandb could not start online ({err}); logging offline — upload later with "
                  f"`wandb sync {run_dir}/wandb/offline-run-*`", file=sys.stderr)
            self.run = wandb.init(mode="offline", **kwargs)

    def log(self, step: int, metrics: dict) -> None:
        """Log the scalar metrics at ``step`` (per-step curves such as ``val/mse_by_step`` go to the summary)."""
        self.run.log({k: v for k, v in metrics.items() if not isinstance(v, (list, tuple))}, step=step)

    def finish(self, results) -> None:
        """Put ``results`` in the summary and close the run, marked failed when ``results`` is None."""
        try:
            if results is not None:
                self.run.summary.update(results)
                if self.options.log_artifact:
                    self._log_checkpoint()
        finally:
            self.run.finish(exit_code=0 if results is not None else 1)

    def _log_checkpoint(self) -> None:
        # the best checkpoint when the run kept one, else the last
        for alias in ("best", "last"):
            path = self.run_dir / "checkpoints" / f"{alias}.pt"
            if path.is_file():
                artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"checkpoint": alias})
                artifact.add_file(str(path))
                self.run.log_artifact(artifact, aliases=[alias])
                return
