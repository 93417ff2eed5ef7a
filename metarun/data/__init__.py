"""Datasets: files (or formulas) → tasks. ``build_tasks`` picks one by ``dataset.name``.

A task source is built by a callable registered in ``DATASETS`` (a class or a function), called as
``build(cfg.dataset, device)``; image datasets build an ``ImageTasks``. A source has:
    objective: "regression" | "classification" (a key of ``metarun.objectives.OBJECTIVES``)
    input_shape: one example's shape, e.g. (1,) or (1, 28, 28); output_dim: outputs of the model head
    sample(num_tasks, generator, shots=None, queries=None, ways=None) -> TaskBatch   (meta-train stream)
    episodes(split, seed, first, count, **sizes) -> TaskBatch   (fixed "val"/"test" episodes; a pure
        function of (split, seed, index) for index in first .. first+count-1)
    check_episodes(split, ways=None, shots=None, queries=None)   (raise ValueError, naming the eval.* key,
        when ``episodes`` could not draw those sizes; called at start-up)
"""

import torch

from metarun.data import imagefolder, miniimagenet, omniglot
from metarun.data.sinusoid import SinusoidTasks
from metarun.data.tasks import TaskBatch

DATASETS = {
    "sinusoid": SinusoidTasks,
    "omniglot": omniglot.build,
    "imagefolder": imagefolder.build,
    "miniimagenet": miniimagenet.build,
}


def build_tasks(cfg, device: torch.device):
    """The task source named by ``cfg.name``, built from its config on ``device``."""
    if cfg.name not in DATASETS:
        raise ValueError(f"dataset.name={cfg.name} is not available; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[cfg.name](cfg, device)


__all__ = ["TaskBatch", "build_tasks", "DATASETS"]
