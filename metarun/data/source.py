"""The task source: what a dataset's ``build(settings, device)`` returns, and the one interface the run, evaluation and
``load_learner`` call on it (no probing for optional members: each has a default here)."""

from typing import Callable, Optional, Protocol

import torch

from metarun.data.tasks import TaskBatch


class TaskSource(Protocol):
    """The episodes of one dataset. A source subclasses this (``class MySource(TaskSource)``), sets the three
    attributes, defines the three methods, and inherits the defaults of the rest."""

    objective: str  # "classification" | "regression": a key of ``metarun.algos.objectives.OBJECTIVES``
    input_shape: tuple  # one example's shape, e.g. (1,) or (1, 28, 28)
    output_dim: int  # the outputs of the network's head (a fixed head's ways, or 1 for regression)
    variable: bool = False  # episodes of variable ways and shots, padded (``metarun.mapping.ragged``)
    # why a training draw cannot be captured in a CUDA graph (``hardware.cuda_graphs``), naming the key; None: it can
    uncapturable: Optional[str] = None
    # ``(x, generator) -> x``: the dataset's augmentation of meta-training images, which ``eval.support_copies``
    # also applies to the support images of evaluation episodes; None: none
    augment: Optional[Callable] = None
    # for ``load_learner`` on raw images: per-channel (mean, std) of pixels in [0, 1], and whether the stored pixels
    # are 255 - file (Omniglot: ink = 1)
    normalisation: Optional[tuple] = None
    inverted: bool = False

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """``num_tasks`` fresh meta-training tasks drawn with ``generator`` (sizes of None: the dataset's)."""
        ...

    def episodes(self, split: str, seed: int, first: int, count: int, **sizes) -> TaskBatch:
        """Fixed ``split`` ("val", "test") episodes ``first`` .. ``first + count - 1``: a pure function of
        (split, seed, index), so that every algorithm and seed sees the same ones."""
        ...

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Raise ValueError, naming the ``eval.*`` key, where ``episodes`` could not draw those sizes (called at
        start-up)."""
        ...

    def scored_splits(self, split: str, sources=None) -> tuple:
        """The splits an evaluation of ``split`` scores apart and averages: ``split`` alone here; one per source
        of a multi-source dataset (``test/aircraft``, ...), where ``sources`` (``eval.sources``) picks them.

        Raises:
            ValueError: ``sources`` given for a dataset of one source.
        """
        if sources:
            raise ValueError(f"eval.sources={list(sources)} picks the test sources of a multi-source dataset "
                             "(dataset=metadataset); this dataset has one: set eval.sources=null")
        return (split,)

    def label_by_class(self) -> bool:
        """Label meta-training examples with their class's index among the train split's classes from now on (an
        algorithm with one classifier over every meta-train class, Baseline's); False where the source cannot."""
        return False
