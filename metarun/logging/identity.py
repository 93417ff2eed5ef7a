"""A run's identity for the trackers (wandb, MLflow), derived from the config and the sweep, never typed by hand."""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def run_identity(cfg: DictConfig) -> dict:
    """``name`` (the overrides, else ``algo-dataset``), ``group`` (the multirun sweep directory's name, else the
    experiment preset, else None), ``tags`` (algo, dataset, model, ways, shots) and ``job_type`` of the run ``cfg``."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    name = group = None
    if hydra_cfg is not None:
        name = hydra_cfg.job.override_dirname or None
        if hydra_cfg.mode.name == "MULTIRUN":
            group = Path(hydra_cfg.sweep.dir).name
        else:
            group = hydra_cfg.runtime.choices.get("experiment")
    dataset = cfg.dataset
    tags = [cfg.algo.name, dataset.name, cfg.model._target_.rsplit(".", 1)[-1].lower()]
    if dataset.get("ways") is not None:
        tags.append(f"{dataset.ways}-way")
    if dataset.get("shots") is not None:
        tags.append(f"{dataset.shots}-shot")
    return {
        "name": name or f"{cfg.algo.name}-{dataset.name}",
        "group": group,
        "tags": tags,
        # mode=eval (scoring a checkpoint) is a run of its own kind in the dashboard
        "job_type": OmegaConf.select(cfg, "mode", default="train"),
    }
