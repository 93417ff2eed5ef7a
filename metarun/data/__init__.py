"""Datasets: files (or formulas) → tasks. ``build_tasks`` builds the one ``dataset._target_`` names.

A dataset is a ``Dataset`` record: its settings' schema and ``build(settings, device)``, which returns a task source,
a ``TaskSource`` (source.py; image datasets build an ``ImageTasks``). ``name`` in the settings names it in results
and run names.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from omegaconf import OmegaConf

from metarun.config.validate import validated
from metarun.data.source import TaskSource
from metarun.data.tasks import TaskBatch
from metarun.utils.registry import locate


@dataclass(frozen=True)
class Dataset:
    """One dataset: ``build(settings, device)`` returns its task source; ``schema`` is its settings' dataclass."""

    build: Callable
    schema: type


def build_tasks(settings, device: torch.device):
    """The task source ``settings._target_`` names, built from its validated settings (a config of its schema) on
    ``device``."""
    dataset = locate(settings, "dataset", Dataset)
    source = dataset.build(OmegaConf.structured(validated(settings, dataset.schema, "dataset")), device)
    if TaskSource not in type(source).__mro__:  # a source without the interface's defaults would fail later
        raise ValueError(f"dataset={settings.name} built a {type(source).__name__}, which is not a task source; make "
                         "it a subclass of metarun.data.TaskSource (docs/own_algorithm.md)")
    return source


__all__ = ["Dataset", "TaskBatch", "TaskSource", "build_tasks"]
