"""Sinusoid regression tasks (Finn et al., 2017, "Model-Agnostic Meta-Learning", section 5.1).

Protocol: each task is y = A sin(x - phase) with A ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5];
K support points and Q query points from the same function, scored by MSE. Whole batches are drawn as
tensors on the training device.
"""

import torch

from metarun.config.datasets import SinusoidConfig
from metarun.data import Dataset
from metarun.data.sampling.functions import FunctionTasks


class SinusoidTasks(FunctionTasks):
    """An endless source of sinusoid tasks; evaluation tasks are fixed by (split, seed, index)."""

    RANGES = ("amplitude", "phase", "x_range")

    def functions(self, num_tasks: int, points: int, generator: torch.Generator) -> tuple:
        """Inputs and targets ``(x, A sin(x - phase))``, each [num_tasks, points, 1]."""
        amplitude = self.uniform("amplitude", (num_tasks, 1, 1), generator)
        phase = self.uniform("phase", (num_tasks, 1, 1), generator)
        x = self.uniform("x_range", (num_tasks, points, 1), generator)
        return x, amplitude * torch.sin(x - phase)


DATASET = Dataset(SinusoidTasks, SinusoidConfig)
