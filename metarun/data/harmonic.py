"""Harmonic regression tasks (Lacoste et al., 2018, "Uncertainty in Multitask Transfer Learning"), with the
generative process of torchmeta's ``torchmeta.toy.Harmonic``.

Protocol: each task is the sum of two sines with frequency ratio 2,
y = a1 sin(w x + b1) + a2 sin(2 w x + b2), with w ~ U[5, 7], b1, b2 ~ U[0, 2 pi], a1, a2 ~ N(0, 1); a task's
inputs are x ~ N(mu_x, 1) around its own mean mu_x ~ U[-4, 4]; targets get Gaussian noise of standard deviation
``noise_std`` (none by default, as in torchmeta). K support points and Q query points from the same function,
scored by MSE. (torchmeta's docstring puts "amplitudes" in [5, 7]: its code draws the frequency there and the
amplitudes from N(0, 1), which is what we follow.)
"""

import torch

from metarun.config.datasets import HarmonicConfig
from metarun.data import Dataset
from metarun.data.sampling.functions import FunctionTasks


class HarmonicTasks(FunctionTasks):
    """An endless source of harmonic tasks; evaluation tasks are fixed by (split, seed, index)."""

    RANGES = ("frequency", "phase", "x_mean")

    def __init__(self, settings, device: torch.device):
        """Read the sizes, ranges and noise level from a ``HarmonicConfig``."""
        super().__init__(settings, device, settings.noise_std)

    def functions(self, num_tasks: int, points: int, generator: torch.Generator) -> tuple:
        """Inputs and targets ``(x, y)``, each [num_tasks, points, 1]: a sum of two harmonics per task."""
        x_mean = self.uniform("x_mean", (num_tasks, 1, 1), generator)
        frequency = self.uniform("frequency", (num_tasks, 1, 1), generator)
        phase = self.uniform("phase", (num_tasks, 1, 2), generator)
        amplitude = torch.randn((num_tasks, 1, 2), generator=generator, device=self.device)
        x = x_mean + torch.randn((num_tasks, points, 1), generator=generator, device=self.device)
        harmonics = torch.tensor([1.0, 2.0], device=self.device)  # the frequency ratio 2
        y = (amplitude * torch.sin(frequency * harmonics * x + phase)).sum(-1, keepdim=True)
        return x, y


DATASET = Dataset(HarmonicTasks, HarmonicConfig)
