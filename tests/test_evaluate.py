"""Evaluation statistics: the 95% confidence interval and the count of diverged episodes."""

import math

import torch
from omegaconf import OmegaConf

from metarun.config.datasets import SinusoidConfig
from metarun.config.run import EvalConfig
from metarun.data.sinusoid import SinusoidTasks
from metarun.runner.evaluate import evaluate, mean_ci95


def test_mean_ci95_is_1_96_sigma_over_sqrt_n():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, ci = mean_ci95(values)
    assert mean == 2.5 and math.isclose(ci, 1.96 * math.sqrt(5 / 3) / 2)


def test_diverged_episodes_are_counted_and_make_the_mean_nan():
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    cfg = OmegaConf.structured(EvalConfig(batch_size=4))

    def curve(params, sx, sy, qx, qy):  # "diverges" on tasks whose first query target is large
        final = torch.where(qy[0, 0].abs() > 2.0, torch.tensor(float("nan")), (qy ** 2).mean())
        return torch.stack([(qy ** 2).mean(), final])

    results = evaluate(curve, {}, source, "test", 10, cfg, "loop", "mse")
    expected = int((source.episodes("test", 0, 0, 10).query_y[:, 0, 0].abs() > 2.0).sum())
    assert 0 < expected < 10 and results["test/nonfinite"] == expected
    assert math.isnan(results["test/mse"]) and len(results["test/mse_by_step"]) == 2
