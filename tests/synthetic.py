"""A tiny synthetic image classification source and CNN, for fast algorithm tests before real data.

Each class is a random 12x12 gray prototype; its 20 images are the prototype plus fixed noise, stored as
uint8 like a real ImageStore and normalised like ImageTasks when sampled. Classes 0-39 are meta-train, 40-59
validation, 60-79 meta-test, so held-out classes are never seen in training.
"""

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch import nn

from metarun.data import Dataset, TaskSource
from metarun.data.sampling.episodes import episode_generator
from metarun.data.tasks import TaskBatch
from metarun.models.batchnorm import BatchNorm2d
from tests.conftest import compose_config

SPLITS = {"train": (0, 40), "val": (40, 60), "test": (60, 80)}


def make_images(noise: float = 100.0) -> torch.Tensor:
    """uint8 [80 classes, 20 images, 1, 12, 12]."""
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(80, 1, 1, 12, 12, generator=g) * 255
    return (prototypes + noise * torch.randn(80, 20, 1, 12, 12, generator=g)).clamp(0, 255).to(torch.uint8)


class SyntheticImages(TaskSource):
    """N-way K-shot episodes of the synthetic classes, with the task-source interface of ``metarun.data``."""

    objective = "classification"
    input_shape = (1, 12, 12)
    normalisation = ([0.5], [0.25])  # (pixel / 255 - mean) / std, reported as ImageTasks does

    def __init__(self, cfg, device):
        """Sizes from a dataset config with ``ways``, ``shots``, ``queries`` and the pixel ``noise``."""
        self.images, self.device = make_images(cfg.noise), device
        self.ways, self.shots, self.queries = cfg.ways, cfg.shots, cfg.queries
        self.output_dim = cfg.ways
        self.class_labels = False

    def label_by_class(self) -> bool:
        """Label meta-training examples with their class's index among the 40 train classes (as ImageTasks does)."""
        self.class_labels, self.output_dim = True, SPLITS["train"][1] - SPLITS["train"][0]
        return True

    def draw(self, split, num_tasks, generator, ways, shots, queries) -> TaskBatch:
        """Episodes from ``split`` drawn with ``generator``."""
        low, high = SPLITS[split]
        classes = torch.rand(num_tasks, high - low, generator=generator).argsort(-1)[:, :ways] + low
        rows = torch.rand(num_tasks, ways, 20, generator=generator).argsort(-1)[..., : shots + queries]
        x = (self.images[classes.unsqueeze(-1), rows].float() / 255.0 - 0.5) / 0.25  # [T, N, K+Q, 1, 12, 12]
        y = (classes - low if self.class_labels and split == "train" else torch.arange(ways).expand(num_tasks, ways))
        y = y.unsqueeze(-1).expand(num_tasks, ways, shots + queries)

        def part(t, start, stop):
            return t[:, :, start:stop].reshape(num_tasks, ways * (stop - start), *t.shape[3:])

        return TaskBatch(part(x, 0, shots), part(y, 0, shots), part(x, shots, shots + queries), part(y, shots, shots + queries))

    def sample(self, num_tasks, generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """A meta-training batch."""
        return self.draw("train", num_tasks, generator, ways or self.ways, shots or self.shots, queries or self.queries)

    def check_episodes(self, split, ways=None, shots=None, queries=None) -> None:
        """Every split has 20 classes of 20 images, enough for the tests' episodes."""

    def episodes(self, split, seed, first, count, ways=None, shots=None, queries=None) -> TaskBatch:
        """Fixed evaluation episodes of ``split``."""
        sizes = (ways or self.ways, shots or self.shots, queries or self.queries)
        return TaskBatch.cat([self.draw(split, 1, episode_generator(split, seed, i, torch.device("cpu")), *sizes)
                              for i in range(first, first + count)])


class TinyCNN(nn.Sequential):
    """Two [3x3 conv, BatchNorm, ReLU, 2x2 max-pool] blocks and a linear head."""

    def __init__(self, input_shape, out_features, width=16, norm="batch"):
        """For 12x12 images; ``norm`` as the backbones' ``model.norm``."""
        running = norm == "running"
        super().__init__(
            nn.Conv2d(input_shape[0], width, 3, padding=1), BatchNorm2d(width, running=running), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), BatchNorm2d(width, running=running), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(width * 9, out_features))


SMALL = ["train.log_every=10", "train.val_every=20", "train.checkpoint_every=20", "train.meta_batch_size=4",
         "eval.episodes=50", "eval.val_episodes=20", "eval.batch_size=25", "logger.console=false", "logger.jsonl=false", "hardware.num_threads=1"]


@dataclass
class SyntheticConfig:
    """The synthetic classes' settings: a dataset from outside metarun, named by ``_target_`` as a user's is."""

    _target_: str = "tests.synthetic.DATASET"
    name: str = "synthetic"
    ways: int = 5
    shots: int = 1
    queries: int = 5
    noise: float = 100.0  # pixel noise around each class's prototype


DATASET = Dataset(SyntheticImages, SyntheticConfig)


def image_config(overrides=(), output_dir=None, ways=5, shots=1, queries=5, noise=100.0, norm="batch"):
    """A run config on the synthetic source (``DATASET``) with TinyCNN."""
    cfg = compose_config([*SMALL, *overrides], output_dir)
    OmegaConf.set_struct(cfg, False)
    cfg.dataset = {"_target_": "tests.synthetic.DATASET", "name": "synthetic", "ways": ways, "shots": shots,
                   "queries": queries, "noise": noise}
    cfg.model = {"_target_": "tests.synthetic.TinyCNN", "width": 16, "norm": norm}
    return cfg
