"""Noisy glyphs: a synthetic few-shot classification dataset of tiny grey images, defined outside metarun.

Protocol (made up for this example; N-way K-shot episodes as in Vinyals et al., 2016): every task draws N new
classes, each a random pattern in the centre half of an ``image_size`` x ``image_size`` grey image. An image of
a class is its pattern plus Gaussian noise (std ``noise``, pixels in [0, 1]), inside a border of clutter drawn
afresh for every image, so a network has to learn to look at the centre. No class is seen twice: meta-train,
validation and meta-test differ only in their random streams, and evaluation episodes are a pure function of
(split, seed, index), as for metarun's own datasets. Whole batches are drawn as tensors on the training device.
"""

from dataclasses import dataclass

import torch

from metarun.config import positive
from metarun.config.datasets import DatasetConfig
from metarun.data import Dataset, TaskSource
from metarun.data.sampling.episodes import fixed_episodes
from metarun.data.tasks import TaskBatch

MEAN, STD = 0.5, 0.25  # pixels are normalised as (pixel - MEAN) / STD; checkpoints keep it for load_learner


@dataclass
class NoisyGlyphsConfig(DatasetConfig):
    """The settings of ``dataset=my_data`` (``dataset.*``), validated when a run starts."""

    _target_: str = "my_data.DATASET"  # this module's DATASET, imported from the folder metarun starts in
    name: str = "my_data"
    ways: int = positive(5, help="classes per task (N)")
    shots: int = positive(1, help="support images per class (K)")
    queries: int = positive(5, help="query images per class")
    image_size: int = positive(8, help="pixels per side; the class pattern fills the centre half")
    noise: float = positive(0.2, help="std of the pixel noise around a class's pattern")


def glyphs(generator: torch.Generator, num_tasks: int, ways: int, count: int, size: int, noise: float,
           device: torch.device) -> torch.Tensor:
    """Pixels in [0, 1] of ``count`` images of each of ``ways`` new classes per task: [T, N, count, 1, size, size]."""
    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    images = uniform(num_tasks, ways, count, 1, size, size)  # the clutter, fresh for every image
    patterns = uniform(num_tasks, ways, 1, 1, size, size)  # one per class
    examples = patterns + noise * torch.randn(images.shape, generator=generator, device=device)
    centre = slice(size // 4, size // 4 + size // 2)
    images[..., centre, centre] = examples[..., centre, centre]
    return images.clamp(0, 1)


class NoisyGlyphs(TaskSource):
    """An endless source of noisy-glyph tasks: a ``metarun.data.TaskSource``."""

    objective = "classification"
    normalisation = ([MEAN], [STD])
    inverted = False

    def __init__(self, settings, device: torch.device):
        """Sizes and noise from a ``NoisyGlyphsConfig``."""
        self.ways, self.shots, self.queries = settings.ways, settings.shots, settings.queries
        self.noise = settings.noise
        self.input_shape, self.output_dim = (1, settings.image_size, settings.image_size), settings.ways
        self.device = device

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """Draw ``num_tasks`` fresh tasks from ``generator`` (on the training device)."""
        ways, shots, queries = ways or self.ways, shots or self.shots, queries or self.queries
        pixels = glyphs(generator, num_tasks, ways, shots + queries, self.input_shape[-1], self.noise, self.device)
        x = (pixels - MEAN) / STD
        y = torch.arange(ways, device=self.device).view(1, ways, 1).expand(num_tasks, ways, shots + queries)
        return TaskBatch(x[:, :, :shots].flatten(1, 2), y[:, :, :shots].flatten(1, 2),
                         x[:, :, shots:].flatten(1, 2), y[:, :, shots:].flatten(1, 2))

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Any sizes can be drawn: every task makes up its own classes and images."""

    def episodes(self, split: str, seed: int, first: int, count: int, **sizes) -> TaskBatch:
        """Evaluation tasks ``first .. first+count-1`` of ``split``: a pure function of (split, seed, index)."""
        return fixed_episodes(lambda generator: self.sample(1, generator, **sizes), split, seed, first, count, self.device)


DATASET = Dataset(NoisyGlyphs, NoisyGlyphsConfig)
