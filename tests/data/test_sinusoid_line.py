"""Sinusoid-or-line tasks (Finn, Xu & Levine, 2018): every task exactly a sinusoid or a line before noise, about
half each, with the paper's ranges; MAML learns them. Shared behaviour (episodes, noise, errors): test_functions.py.
"""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from metarun.config.datasets import SinusoidLineConfig
from metarun.data import build_tasks
from metarun.data.sinusoid_line import SinusoidLineTasks
from tests.conftest import compose_config, run_cli
from tests.data.fits import least_squares, line, points, sinusoid, sinusoid_parameters

CPU = torch.device("cpu")
TASKS = 2000


@pytest.fixture(scope="module")
def fitted():
    """TASKS noiseless tasks of 10 points: x, and the line and sinusoid fits of each (coefficients, residual)."""
    cfg = OmegaConf.structured(SinusoidLineConfig(shots=5, queries=5, noise_std=0.0))
    x, y = points(SinusoidLineTasks(cfg, CPU).sample(TASKS, torch.Generator().manual_seed(0)))
    return x, least_squares(line(x), y), least_squares(sinusoid(x), y)


def assert_fills(values: torch.Tensor, low: float, high: float):
    """``values`` lie in [low, high] and reach both ends: with n uniform draws the nearest lies within 1% of an end
    but with probability 0.99^n (4e-5 for n = 1000), so a narrower or shifted range fails."""
    slack = 0.01 * (high - low)
    assert low - 1e-4 <= values.min() < low + slack and high - slack < values.max() <= high + 1e-4, (low, high)


def test_each_task_is_exactly_a_line_or_a_sinusoid_about_half_each(fitted):
    _, (_, line_residual), (_, sinusoid_residual) = fitted
    is_line, is_sinusoid = line_residual < 1e-4, sinusoid_residual < 1e-4
    assert bool((is_line ^ is_sinusoid).all())  # one kind each, never both, never neither
    # a fair coin per task: the count of sinusoids is Binomial(TASKS, 1/2), within 5 of its standard deviations
    assert abs(int(is_sinusoid.sum()) - TASKS / 2) < 5 * math.sqrt(TASKS / 4)


def test_parameters_and_inputs_fill_the_papers_ranges(fitted):
    x, (line_coef, line_residual), (sinusoid_coef, sinusoid_residual) = fitted
    lines, sinusoids = line_residual < 1e-4, sinusoid_residual < 1e-4
    intercept, slope = line_coef[lines, 0, 0], line_coef[lines, 1, 0]
    amplitude, phase = sinusoid_parameters(sinusoid_coef[sinusoids])
    assert_fills(slope, -3.0, 3.0)
    assert_fills(intercept, -3.0, 3.0)
    assert_fills(amplitude, 0.1, 5.0)
    assert_fills(phase, 0.0, math.pi)
    assert_fills(x, -5.0, 5.0)


def test_dataset_sinusoid_line_adds_the_papers_noise_to_the_same_functions():
    cfg = compose_config(["dataset=sinusoid_line"]).dataset
    noisy = build_tasks(cfg, CPU).sample(400, torch.Generator().manual_seed(2))
    cfg.noise_std = 0.0
    clean = build_tasks(cfg, CPU).sample(400, torch.Generator().manual_seed(2))
    noise = (noisy.query_y - clean.query_y).double()
    # Finn et al.'s std 0.3, within 5 standard errors of a sample std (about 0.3 / sqrt(2n))
    assert abs(noise.std() - 0.3) < 5 * 0.3 / math.sqrt(2 * noise.numel())


@pytest.mark.slow
def test_maml_learns_sinusoid_line_tasks_in_a_few_hundred_iterations(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("algo=maml", "dataset=sinusoid_line", "model=mlp", "train.iterations=400", "train.log_every=100",
                  "train.val_every=200", "eval.episodes=200", "hardware.num_threads=1", "logger.console=false",
                  f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["algo"], results["dataset"], results["iterations"]) == ("maml", "sinusoid_line", 400)
    # the run's own fixed test episodes predicted by zero: about E[y^2] (16 with the paper's ranges)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    test = build_tasks(cfg.dataset, CPU).episodes("test", cfg.eval.seed, 0, cfg.eval.episodes,
                                                  shots=cfg.eval.shots, queries=cfg.eval.queries)
    zero = test.query_y.pow(2).mean().item()
    assert results["test/mse"] < 0.5 * zero, (results["test/mse"], zero)
