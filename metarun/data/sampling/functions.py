"""What the regression task families (sinusoid, sinusoid_line, harmonic) share: parameters drawn uniformly from
[low, high] ranges on the training device with the run's generator, optional Gaussian observation noise, fixed
evaluation episodes, and one-line errors for a bad range or noise level at start-up."""

from functools import partial

import torch

from metarun.data.sampling.episodes import fixed_episodes
from metarun.data.source import TaskSource
from metarun.data.tasks import TaskBatch


def checked_range(key: str, bounds) -> tuple:
    """``bounds`` (the setting ``dataset.<key>``) as (low, high).

    Raises:
        ValueError: naming ``dataset.<key>`` when it is not two numbers with low <= high.
    """
    bounds = list(bounds)
    if len(bounds) != 2 or not bounds[0] <= bounds[1]:
        raise ValueError(f"dataset.{key} must be [low, high] with low <= high, got {bounds}; "
                         f"set e.g. dataset.{key}=[{min(bounds, default=0)},{max(bounds, default=1)}]")
    return tuple(bounds)


class FunctionTasks(TaskSource):
    """An endless source of 1-D regression tasks; evaluation tasks are fixed by (split, seed, index).

    A family names its uniformly drawn settings in ``RANGES`` and draws a batch of functions in ``functions``;
    every draw comes from the generator it is given, on the device, for all tasks at once.
    """

    objective = "regression"
    input_shape = (1,)
    output_dim = 1
    RANGES: tuple = ()  # the settings that are [low, high] ranges

    def __init__(self, settings, device: torch.device, noise_std: float = 0.0):
        """Read the sizes and the ``RANGES`` from ``settings``; ``noise_std`` is the targets' Gaussian noise.

        Raises:
            ValueError: one line naming the key of a reversed range or a negative noise level.
        """
        self.shots, self.queries, self.device = settings.shots, settings.queries, device
        self.ranges = {key: checked_range(key, settings[key]) for key in self.RANGES}
        if not noise_std >= 0:
            raise ValueError(f"dataset.noise_std must be >= 0, got {noise_std}; set e.g. dataset.noise_std=0")
        self.noise_std = noise_std

    def uniform(self, key: str, shape: tuple, generator: torch.Generator) -> torch.Tensor:
        """A tensor of ``shape`` drawn uniformly from the range ``dataset.<key>``."""
        low, high = self.ranges[key]
        return torch.rand(shape, generator=generator, device=self.device) * (high - low) + low

    def functions(self, num_tasks: int, points: int, generator: torch.Generator) -> tuple:
        """Inputs and noiseless targets ``(x, y)``, each [num_tasks, points, 1]: one function per task."""
        raise NotImplementedError

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """Draw ``num_tasks`` fresh tasks from ``generator`` (on the training device)."""
        shots, queries = shots or self.shots, queries or self.queries
        x, y = self.functions(num_tasks, shots + queries, generator)
        if self.noise_std:  # no draw without noise, so a noiseless family's stream is its functions' alone
            y = y + self.noise_std * torch.randn(y.shape, generator=generator, device=self.device)
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Any sizes can be drawn: functions have no limit on their points."""

    def episodes(self, split: str, seed: int, first: int, count: int, **sizes) -> TaskBatch:
        """Evaluation tasks ``first .. first+count-1`` of ``split``: a pure function of (split, seed, index)."""
        return fixed_episodes(partial(self.sample, 1, **sizes), split, seed, first, count, self.device)
