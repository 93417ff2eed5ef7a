"""Sinusoid tasks: shapes, the paper's ranges, and fixed evaluation episodes."""

import math

import torch
from omegaconf import OmegaConf

from metarun.config import SinusoidConfig
from metarun.data.sinusoid import SinusoidTasks

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
    batch = make(shots=5, queries=5).sample(16, torch.Generator().manual_seed(1))
    # y = A sin(x - phase) = a sin x + b cos x: fit (a, b) on the support, predict the query exactly
    basis = lambda x: torch.cat([torch.sin(x), torch.cos(x)], -1).double()  # noqa: E731
    coef = torch.linalg.lstsq(basis(batch.support_x), batch.support_y.double()).solution
    torch.testing.assert_close(basis(batch.query_x) @ coef, batch.query_y.double(), atol=1e-4, rtol=1e-4)
    amplitude = coef.squeeze(-1).norm(dim=-1)
    assert amplitude.min() >= 0.1 - 1e-4 and amplitude.max() <= 5.0 + 1e-4
    phase = torch.atan2(-coef[:, 1, 0], coef[:, 0, 0])  # a = A cos(phase), b = -A sin(phase)
    assert phase.min() >= -1e-4 and phase.max() <= math.pi + 1e-4


def test_evaluation_episodes_are_a_pure_function_of_split_seed_index():
    tasks = make()
    whole = tasks.episodes("test", 0, 0, 10)
    part = tasks.episodes("test", 0, 5, 5)
    torch.testing.assert_close(whole.query_y[5:], part.query_y)
    assert not torch.equal(tasks.episodes("val", 0, 0, 10).support_x, whole.support_x)
    assert not torch.equal(tasks.episodes("test", 1, 0, 10).support_x, whole.support_x)
    assert tasks.episodes("test", 0, 0, 3, shots=5, queries=100).query_x.shape == (3, 100, 1)


def test_reversed_range_is_rejected():
    try:
        make(amplitude=[5.0, 0.1])
    except ValueError as err:
        assert "dataset.amplitude" in str(err)
    else:
        raise AssertionError("a reversed amplitude range was accepted")
