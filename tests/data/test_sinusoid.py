"""Sinusoid tasks: the paper's ranges and formula (fixed episodes and range errors: test_functions.py)."""

import math

import torch
from omegaconf import OmegaConf

from metarun.config.datasets import SinusoidConfig
from metarun.data.sinusoid import SinusoidTasks
from tests.data.fits import least_squares, points, sinusoid, sinusoid_parameters

CPU = torch.device("cpu")


def make(**overrides):
    return SinusoidTasks(OmegaConf.structured(SinusoidConfig(**overrides)), CPU)


def test_batch_shapes_and_ranges():
    batch = make(shots=10, queries=7).sample(64, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == batch.support_y.shape == (64, 10, 1)
    assert batch.query_x.shape == batch.query_y.shape == (64, 7, 1)
    xs = torch.cat([batch.support_x, batch.query_x], 1)
    ys = torch.cat([batch.support_y, batch.query_y], 1)
    assert xs.min() >= -5 and xs.max() <= 5
    assert ys.abs().max() <= 5.0 and ys.abs().amax(1).max() > 3.0  # amplitudes reach the top of U[0.1, 5]


def test_support_and_query_come_from_one_sinusoid_per_task():
    x, y = points(make(shots=5, queries=5).sample(16, torch.Generator().manual_seed(1)))
    coef, residual = least_squares(sinusoid(x), y)  # y = A sin(x - phase) = a sin x + b cos x, exactly
    assert residual.max() < 1e-4
    amplitude, phase = sinusoid_parameters(coef)
    assert amplitude.min() >= 0.1 - 1e-4 and amplitude.max() <= 5.0 + 1e-4
    assert phase.min() >= -1e-4 and phase.max() <= math.pi + 1e-4
