"""Datasets: files (or formulas) → tasks. ``build_tasks`` builds the one ``dataset._target_`` names.

A dataset is a ``Dataset`` record: its settings' schema and ``build(cfg, device)``, which returns a task source
(image datasets build an ``ImageTasks``). A source has:
    objective: "regression" | "classification" (a key of ``metarun.objectives.OBJECTIVES``)
    input_shape: one example's shape, e.g. (1,) or (1, 28, 28); output_dim: outputs of the model head
    sample(num_tasks, generator, shots=None, queries=None, ways=None) -> TaskBatch   (meta-train stream)
    episodes(split, seed, first, count, **sizes) -> TaskBatch   (fixed "val"/"test" episodes; a pure
        function of (split, seed, index) for index in first .. first+count-1)
    check_episodes(split, ways=None, shots=None, queries=None)   (raise ValueError, naming the eval.* key,
        when ``episodes`` could not draw those sizes; called at start-up)
optionally ``scored_splits(split, sources)`` (a multi-source dataset's evaluation splits, see ``scored_splits``),
and, for ``load_learner`` on raw images, ``normalisation`` (per-channel mean and std of pixels in [0, 1]) and
``inverted`` (pixels stored as 255 - file); ``name`` in the settings names it in results and run names.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from omegaconf import OmegaConf

from metarun.config import validated
from metarun.data.tasks import TaskBatch
from metarun.registry import locate


@dataclass(frozen=True)
class Dataset:
    """One dataset: ``build(cfg, device)`` returns its task source; ``schema`` is its settings' dataclass."""

    build: Callable
    schema: type


def scored_splits(source, split: str, sources=None) -> tuple:
    """The splits an evaluation of ``split`` scores apart and averages: one per source of a multi-source dataset
    (its ``scored_splits(split, sources)``, e.g. ``test/aircraft``), else ``split`` alone.

    Raises:
        ValueError: ``sources`` (``eval.sources``) given for a dataset of one source.
    """
    if hasattr(source, "scored_splits"):
        return source.scored_splits(split, sources)
    if sources:
        raise ValueError(f"eval.sources={list(sources)} picks the test sources of a multi-source dataset "
                         "(dataset=metadataset); this dataset has one: set eval.sources=null")
    return (split,)


def build_tasks(cfg, device: torch.device):
    """The task source ``cfg._target_`` names, built from its validated settings (a config of its schema) on
    ``device``."""
    dataset = locate(cfg, "dataset", Dataset)
    return dataset.build(OmegaConf.structured(validated(cfg, dataset.schema, "dataset")), device)


__all__ = ["Dataset", "TaskBatch", "build_tasks", "scored_splits"]
