"""Sinusoid-or-line regression tasks (Finn, Xu & Levine, 2018, "Probabilistic Model-Agnostic Meta-Learning",
its ambiguous 1-D regression), as in torchmeta's SinusoidAndLine.

Protocol: each task is, with probability 1/2, MAML's sinusoid y = A sin(x - phase) (A ~ U[0.1, 5],
phase ~ U[0, pi]) or else a line y = slope x + intercept (slope, intercept ~ U[-3, 3]); x ~ U[-5, 5] and every
target gets Gaussian noise of standard deviation ``noise_std`` (0.3 by default; torchmeta's default is none).
K support points and Q query points from the same function, scored by MSE. torchmeta makes exactly half of a
fixed pool of tasks sinusoids; an endless stream draws each task's kind instead, so the halves hold on average.
"""

import torch

from metarun.config.datasets import SinusoidLineConfig
from metarun.data import Dataset
from metarun.data.sinusoid import SinusoidTasks


class SinusoidLineTasks(SinusoidTasks):
    """An endless source of sinusoid-or-line tasks; evaluation tasks are fixed by (split, seed, index)."""

    RANGES = SinusoidTasks.RANGES + ("slope", "intercept")

    def __init__(self, settings, device: torch.device):
        """Read the sizes, ranges and noise level from a ``SinusoidLineConfig``."""
        super().__init__(settings, device, settings.noise_std)

    def functions(self, num_tasks: int, points: int, generator: torch.Generator) -> tuple:
        """Inputs and targets ``(x, y)``, each [num_tasks, points, 1]: a sinusoid or a line per task."""
        # both kinds' parameters for every task, then a coin per task: one vectorised draw, no loop over tasks
        x, sinusoid = super().functions(num_tasks, points, generator)
        slope = self.uniform("slope", (num_tasks, 1, 1), generator)
        intercept = self.uniform("intercept", (num_tasks, 1, 1), generator)
        is_sinusoid = torch.rand((num_tasks, 1, 1), generator=generator, device=self.device) < 0.5
        return x, torch.where(is_sinusoid, sinusoid, slope * x + intercept)


DATASET = Dataset(SinusoidLineTasks, SinusoidLineConfig)
