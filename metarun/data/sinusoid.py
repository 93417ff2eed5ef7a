"""Sinusoid regression tasks (Finn et al., 2017, "Model-Agnostic Meta-Learning", section 5.1).

Protocol: each task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5];
K support points and Q query points from the same function, scored by MSE. Whole batches are drawn as
tensors on the training device.
"""

import torch

from metarun.config import SinusoidConfig
from metarun.data import Dataset
from metarun.data.episodes import fixed_episodes
from metarun.data.tasks import TaskBatch


class SinusoidTasks:
    """An endless source of sinusoid tasks; evaluation tasks are fixed by (split, seed, index)."""

    objective = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(self, cfg, device: torch.device):
        """Read the ranges and set sizes from a ``SinusoidConfig``."""
        self.shots, self.queries = cfg.shots, cfg.queries
        self.amplitude, self.phase, self.x_range = (tuple(cfg[k]) for k in ("amplitude", "phase", "x_range"))
        for key, (low, high) in zip(("amplitude", "phase", "x_range"), (self.amplitude, self.phase, self.x_range)):
            if not low <= high:
                raise ValueError(f"dataset.{key} must be [low, high] with low <= high, got [{low}, {high}]")
        self.device = device

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """Draw ``num_tasks`` fresh tasks from ``generator`` (on the training device)."""
        shots, queries = shots or self.shots, queries or self.queries

        def uniform(shape, bounds):
            low, high = bounds
            return torch.rand(shape, generator=generator, device=self.device) * (high - low) + low

        amplitude = uniform((num_tasks, 1, 1), self.amplitude)
        phase = uniform((num_tasks, 1, 1), self.phase)
        x = uniform((num_tasks, shots + queries, 1), self.x_range)
        y = amplitude * torch.sin(x - phase)
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Any sizes can be drawn: functions have no limit on their points."""

    def episodes(self, split: str, seed: int, first: int, count: int, **sizes) -> TaskBatch:
        """Evaluation tasks ``first .. first+count-1`` of ``split``: a pure function of (split, seed, index)."""
        return fixed_episodes(lambda generator: self.sample(1, generator, **sizes), split, seed, first, count, self.device)


DATASET = Dataset(SinusoidTasks, SinusoidConfig)
