"""Evaluation on fixed episodes: mean and 95% confidence interval, and the curve over test-time inner steps."""

import math

import torch

from metarun.engine import map_tasks


def mean_ci95(values: torch.Tensor) -> tuple:
    """Mean and 95% confidence half-width 1.96·σ/√n of per-episode values."""
    values = values.double()
    if values.numel() < 2:
        return values.mean().item(), float("nan")
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())


def evaluate(eval_task, params, source, split: str, episodes: int, cfg, mode: str, metric: str) -> dict:
    """Score ``episodes`` fixed episodes of ``split``; ``eval_task`` returns each episode's per-step curve.

    Returns:
        ``{split/metric, split/metric_ci95, split/metric_by_step, split/nonfinite}``: the metric after the last
        test-time inner step with its CI, the mean metric after 0, 1, ... steps, and how many episodes ended
        non-finite (an inner loop that diverged makes the mean NaN; the count says how often).
    """
    sizes = {"ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries}
    curves = []
    # no outer graph is needed; torch.func.grad still differentiates the inner steps inside no_grad
    with torch.no_grad():
        for first in range(0, episodes, cfg.batch_size):
            batch = source.episodes(split, cfg.seed, first, min(cfg.batch_size, episodes - first), **sizes)
            curves.append(map_tasks(eval_task, params, batch, mode))
    curves = torch.cat(curves)
    mean, ci95 = mean_ci95(curves[:, -1])
    return {
        f"{split}/{metric}": mean,
        f"{split}/{metric}_ci95": ci95,
        f"{split}/{metric}_by_step": curves.double().mean(0).tolist(),
        f"{split}/nonfinite": int((~torch.isfinite(curves[:, -1])).sum()),
    }
