"""What the regression families share (metarun/data/sampling/functions.py): batch shapes, the generator as the only source
of randomness, fixed evaluation episodes, Gaussian observation noise, and one-line errors for bad settings."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from metarun.config.datasets import HarmonicConfig, SinusoidConfig, SinusoidLineConfig
from metarun.data.harmonic import HarmonicTasks
from metarun.data.sinusoid import SinusoidTasks
from metarun.data.sinusoid_line import SinusoidLineTasks
from tests.conftest import TINY, run_cli

CPU = torch.device("cpu")
FAMILIES = {"sinusoid": (SinusoidTasks, SinusoidConfig), "sinusoid_line": (SinusoidLineTasks, SinusoidLineConfig),
            "harmonic": (HarmonicTasks, HarmonicConfig)}
NOISY = ["sinusoid_line", "harmonic"]  # the families with a noise_std setting
FIELDS = ("support_x", "support_y", "query_x", "query_y")


def make(name, **overrides):
    tasks, schema = FAMILIES[name]
    return tasks(OmegaConf.structured(schema(**overrides)), CPU)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def fields(batch, rows=slice(None)):
    return [getattr(batch, f)[rows] for f in FIELDS]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(fields(a), fields(b)))


@pytest.mark.parametrize("name", FAMILIES)
def test_batches_are_tasks_by_points_by_one(name):
    tasks = make(name, shots=3, queries=4)
    assert (tasks.objective, tasks.input_shape, tasks.output_dim) == ("regression", (1,), 1)
    batch = tasks.sample(5, generator(0))
    assert batch.support_x.shape == batch.support_y.shape == (5, 3, 1)
    assert batch.query_x.shape == batch.query_y.shape == (5, 4, 1)
    assert tasks.sample(2, generator(0), shots=6, queries=1).support_y.shape == (2, 6, 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_generator_alone_decides_the_tasks(name):
    tasks = make(name)
    first = tasks.sample(8, generator(3))
    torch.manual_seed(123)  # the global stream plays no part
    assert same(tasks.sample(8, generator(3)), first)
    other = tasks.sample(8, generator(4))
    assert not any(torch.equal(x, y) for x, y in zip(fields(other), fields(first)))


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluation_episodes_are_a_pure_function_of_split_seed_index(name):
    tasks = make(name)
    whole = tasks.episodes("test", 0, 0, 10)
    tasks.sample(4, generator(0))  # drawing training tasks in between changes nothing
    part = tasks.episodes("test", 0, 5, 5)
    assert all(torch.equal(x, y) for x, y in zip(fields(whole, slice(5, None)), fields(part)))
    assert same(make(name).episodes("test", 0, 0, 10), whole)  # a fresh source: the same episodes
    assert not torch.equal(tasks.episodes("val", 0, 0, 10).support_x, whole.support_x)
    assert not torch.equal(tasks.episodes("test", 1, 0, 10).support_x, whole.support_x)
    assert tasks.episodes("test", 0, 0, 3, shots=5, queries=100).query_x.shape == (3, 100, 1)


@pytest.mark.parametrize("name", NOISY)
def test_noise_is_gaussian_with_the_set_std_on_the_same_functions(name):
    std, tasks, points = 0.5, 400, 20
    noisy = make(name, noise_std=std).sample(tasks, generator(1))
    clean = make(name, noise_std=0.0).sample(tasks, generator(1))
    assert torch.equal(noisy.support_x, clean.support_x) and torch.equal(noisy.query_x, clean.query_x)
    noise = torch.cat([noisy.support_y - clean.support_y, noisy.query_y - clean.query_y], 1).double()
    n = tasks * points
    # 5 standard errors: the sample mean's std/sqrt(n), the sample std's about std/sqrt(2n)
    assert abs(noise.mean()) < 5 * std / math.sqrt(n)
    assert abs(noise.std() - std) < 5 * std / math.sqrt(2 * n)


@pytest.mark.parametrize("name, key, bad", [
    ("sinusoid", "amplitude", [5.0, 0.1]), ("sinusoid_line", "slope", [3.0, -3.0]),
    ("sinusoid_line", "intercept", [1.0]), ("harmonic", "frequency", [7.0, 5.0]), ("harmonic", "x_mean", [4.0, -4.0]),
])
def test_a_bad_range_is_a_one_line_error_naming_its_key(name, key, bad):
    with pytest.raises(ValueError, match=rf"^dataset\.{key} must be \[low, high\] with low <= high, got ") as err:
        make(name, **{key: bad})
    assert "\n" not in str(err.value) and f"set e.g. dataset.{key}=[" in str(err.value)


@pytest.mark.parametrize("name", NOISY)
def test_a_negative_noise_std_is_a_one_line_error(name):
    message = r"^dataset\.noise_std must be >= 0, got -0\.1; set e\.g\. dataset\.noise_std=0$"
    with pytest.raises(ValueError, match=message):
        make(name, noise_std=-0.1)


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("dataset=harmonic dataset.frequency=[7,5]", "dataset.frequency must be [low, high] with low <= high"),
    ("dataset=sinusoid_line dataset.noise_std=-1", "dataset.noise_std must be >= 0"),
])
def test_bad_settings_stop_the_cli_at_start_up(tmp_path, override, message):
    run = run_cli(*override.split(), *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"metarun: error: {message}"), run.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
