"""Evaluation on fixed episodes: mean and 95% confidence interval, the curve over test-time inner steps, and
the re-evaluation of a saved checkpoint (``metarun mode=eval checkpoint=PATH``)."""

import contextlib
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metarun import mode_memory
from metarun.checkpoint import load_checkpoint, restore_buffers
from metarun.distributed import Group
from metarun.components import build_components
from metarun.logging.console import tracked
from metarun.logging.results import write_results
from metarun.logging.table import metric_text
from metarun.task_parallel import map_tasks, tune

# config groups: a checkpoint is re-evaluated with its own choices, only keys may be overridden
GROUPS = ("algo", "dataset", "model", "hardware", "logger", "paths", "experiment")


def mean_ci95(values: torch.Tensor) -> tuple:
    """Mean and 95% confidence half-width 1.96·σ/√n of per-episode values."""
    values = values.double()
    if values.numel() < 2:
        return values.mean().item(), float("nan")
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())


def evaluate(eval_task, params, source, split: str, episodes: int, cfg, task_parallel: str, metric: str,
             group: Group = Group(), autocast=contextlib.nullcontext) -> dict:
    """Score ``episodes`` fixed episodes of ``split``; ``eval_task`` returns each episode's per-step curve.

    Under ``hardware=ddp`` each rank of ``group`` scores a contiguous block of the episodes and the curves are
    gathered, so every rank returns the single-process figures.

    Returns:
        ``{split/metric, split/metric_ci95, split/metric_by_step, split/nonfinite}``: the metric after the last
        test-time inner step with its CI, the mean metric after 0, 1, ... steps, and how many episodes ended
        non-finite (an inner loop that diverged makes the mean NaN; the count says how often).
    """
    sizes = {"ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries}
    curves = []
    # no outer graph is needed; torch.func.grad still differentiates the inner steps inside no_grad
    with torch.no_grad(), autocast():
        share = group.block(episodes)
        firsts = range(share.start, share.stop, cfg.batch_size)
        for first in tracked(firsts, len(firsts), f"{split} ({episodes} episodes)", unit="batch"):
            batch = source.episodes(split, cfg.seed, first, min(cfg.batch_size, share.stop - first), **sizes)
            curves.append(map_tasks(eval_task, params, batch, task_parallel))
    curves = torch.cat(group.gather(curves))
    mean, ci95 = mean_ci95(curves[:, -1])
    return {
        f"{split}/{metric}": mean,
        f"{split}/{metric}_ci95": ci95,
        f"{split}/{metric}_by_step": curves.double().mean(0).tolist(),
        f"{split}/nonfinite": int((~torch.isfinite(curves[:, -1])).sum()),
    }


def checkpoint_config(cfg, overrides: list) -> DictConfig:
    """The checkpoint's own resolved config with this command's ``key=value`` overrides applied.

    Args:
        cfg: this command's composed config (``checkpoint``, ``paths.output_dir`` and the overridden values).
        overrides: the command line's overrides, e.g. ``["eval.episodes=1000", "algo.test_inner_steps=20"]``.
    """
    saved = OmegaConf.create(load_checkpoint(Path(cfg.checkpoint)).config)
    # hardware keys newer than the checkpoint take this command's values
    saved.hardware = OmegaConf.merge(cfg.hardware, saved.hardware)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+")
        if key in ("mode", "checkpoint") or key.startswith("hydra"):
            continue
        if key in GROUPS:
            raise ValueError(f"mode=eval re-evaluates the checkpoint's own {key}; drop {override} "
                             f"and override keys instead (e.g. eval.episodes=1000, algo.test_inner_steps=20)")
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    saved.paths.output_dir = cfg.paths.output_dir
    return saved


def evaluate_checkpoint(cfg, overrides: list = ()) -> dict:
    """Meta-test ``cfg.checkpoint`` with its config plus ``overrides``; write results.json in ``paths.output_dir``."""
    run_cfg = checkpoint_config(cfg, overrides)
    parts = build_components(run_cfg)
    checkpoint = load_checkpoint(Path(cfg.checkpoint), parts.device)
    restore_buffers(parts.model, checkpoint)
    parts.model.eval()  # batch norm's running averages, where the model keeps them (model.norm=running)
    metric, sizes = parts.objective.metric_name, {key: run_cfg.eval[key] for key in ("ways", "shots", "queries")}
    eval_task = parts.per_task(parts.eval_task(run_cfg.eval.transductive))
    with torch.no_grad():
        # timed on the first test episodes (evaluation has no backward pass)
        batch = min(run_cfg.eval.batch_size, run_cfg.eval.episodes)
        memory = mode_memory.for_run(run_cfg, "eval", parts.device, batch=batch,
                                     transductive=run_cfg.eval.transductive, **sizes)
        tune(parts, eval_task, checkpoint.params,
             lambda: parts.source.episodes("test", run_cfg.eval.seed, 0, batch, **sizes), memory=memory)
    results = {
        **evaluate(eval_task, checkpoint.params, parts.source, "test", run_cfg.eval.episodes, run_cfg.eval,
                   parts.task_parallel, metric, autocast=parts.autocast),
        "checkpoint": str(cfg.checkpoint),
        "checkpoint/iteration": checkpoint.iteration,
        "algo": run_cfg.algo.name,
        "dataset": run_cfg.dataset.name,
        "hardware/task_parallel": parts.task_parallel,
        "test/episodes": run_cfg.eval.episodes,
        "test/inner_steps": OmegaConf.select(run_cfg, "algo.test_inner_steps", default=0),
        "seed": run_cfg.seed,
    }
    write_results(Path(run_cfg.paths.output_dir) / "results.json", results)
    score = metric_text(f"test/{metric}", results[f"test/{metric}"], results[f"test/{metric}_ci95"])
    print(f"{run_cfg.algo.name} on {run_cfg.dataset.name} ({cfg.checkpoint}): test/{metric} = {score} "
          f"({run_cfg.eval.episodes} episodes)")
    return results
