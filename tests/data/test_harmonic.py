"""Harmonic tasks (Lacoste et al., 2018; torchmeta's Harmonic): each task exactly a1 sin(w x + b1) + a2 sin(2 w x
+ b2) with w ~ U[5, 7], a ~ N(0, 1), x ~ N(mu_x, 1), mu_x ~ U[-4, 4]. Shared behaviour: test_functions.py."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from metarun.config.datasets import HarmonicConfig
from metarun.data.harmonic import HarmonicTasks
from tests.conftest import TINY, run_cli
from tests.data.fits import least_squares, points

CPU = torch.device("cpu")


def make(**overrides):
    return HarmonicTasks(OmegaConf.structured(HarmonicConfig(**overrides)), CPU)


def two_harmonics(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The basis [sin w x, sin 2w x, cos w x, cos 2w x] for each frequency of ``w`` [T, G]: [T, G, P, 4]."""
    angle = x.unsqueeze(1) * w[:, :, None, None] * torch.tensor([1.0, 2.0], dtype=x.dtype)
    return torch.cat([torch.sin(angle), torch.cos(angle)], -1)


def fit_frequency(x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Per task, the w in [4, 8] whose two harmonics fit ``y`` best: a grid of step 0.005 (finer than the best fit's
    basin, about 1 / (2 max|x|) wide), then ten 10x zooms. Returns w [T, 1], coefficients and largest residual."""
    step = 5e-3
    w = torch.arange(4.0, 8.0, step, dtype=x.dtype).expand(len(x), -1)
    for _ in range(10):
        _, residual = least_squares(two_harmonics(x, w), y.unsqueeze(1).expand(-1, w.shape[1], -1, -1))
        best = w.gather(1, residual.argmin(1, keepdim=True))
        w, step = best + torch.linspace(-step, step, 21, dtype=x.dtype), step / 10
    coef, residual = least_squares(two_harmonics(x, best), y.unsqueeze(1))
    return best, coef[:, 0], residual[:, 0]


def test_each_task_is_two_sines_with_frequency_ratio_two_and_normal_amplitudes():
    x, y = points(make(shots=20, queries=20).sample(64, torch.Generator().manual_seed(0)))
    w, coef, residual = fit_frequency(x, y)
    assert residual.max() < 1e-4 * y.abs().max()  # an exact fit: noiseless, ratio 2
    slack = 0.2  # 64 uniform draws all miss an end's 10% with probability 0.9^64 = 0.001
    assert 5.0 - 1e-6 <= w.min() < 5.0 + slack and 7.0 - slack < w.max() <= 7.0 + 1e-6
    # a sin(t + b) = a cos(b) sin t + a sin(b) cos t: |a| from each harmonic's (sin, cos) pair
    amplitude = torch.hypot(coef[:, :2, 0], coef[:, 2:, 0]).flatten()
    # |N(0, 1)| has mean sqrt(2/pi) and variance 1 - 2/pi; within 5 standard errors
    assert abs(amplitude.mean() - math.sqrt(2 / math.pi)) < 5 * math.sqrt((1 - 2 / math.pi) / amplitude.numel())
    # a ~ N(0, 1) and b ~ U[0, 2 pi] make the angle of (a cos b, a sin b) uniform over a half turn
    angle = torch.atan2(coef[:, 2:, 0], coef[:, :2, 0]).flatten() % math.pi
    n = angle.numel()
    assert abs(int((angle < math.pi / 2).sum()) - n / 2) < 5 * math.sqrt(n / 4)
    assert angle.min() < 0.05 * math.pi and angle.max() > 0.95 * math.pi  # each end missed with probability 0.95^128


def test_inputs_are_unit_normal_around_a_uniform_task_mean():
    tasks, points_per_task = 64, 200
    x, _ = points(make(shots=100, queries=100).sample(tasks, torch.Generator().manual_seed(1)))
    means = x.mean((1, 2))
    assert means.abs().max() < 4.0 + 5 / math.sqrt(points_per_task)  # mu_x in [-4, 4], plus 5 standard errors
    assert means.min() < -3.0 and means.max() > 3.0  # (7/8)^64 = 2e-4: both ends' eighths are reached
    pooled = (x - x.mean(1, keepdim=True)).pow(2).sum() / (tasks * (points_per_task - 1))
    assert abs(pooled.sqrt() - 1.0) < 5 / math.sqrt(2 * tasks * (points_per_task - 1))


@pytest.mark.slow
def test_cli_meta_trains_and_tests_on_harmonic(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("algo=maml", "dataset=harmonic", "model=mlp", *TINY, f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["algo"], results["dataset"]) == ("maml", "harmonic") and math.isfinite(results["test/mse"])
    assert (run_dir / "checkpoints" / "last.pt").is_file()
