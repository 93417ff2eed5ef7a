"""The learn2learn peer: its ``MAML`` class, loaded from the extracted sdist (learn2learn 0.2.0 does not build on
Python 3.11) or an installed package, and MAML's meta-step as its examples write it."""

import functools
import importlib
import sys
import types
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from metarun.data.tasks import TaskBatch

from .impl import MissingPeer

L2L_COMMAND = "pip download --no-deps --no-binary :all: learn2learn==0.2.0 && tar xzf learn2learn-0.2.0.tar.gz"


@functools.cache
def maml_class(root) -> type:
    """learn2learn's ``MAML`` class: from the extracted sdist at ``root`` when given, else the installed package.

    learn2learn 0.2.0 does not build on Python 3.11, and its ``learn2learn/__init__.py`` imports the compiled
    parts; ``algorithms/maml.py``, ``algorithms/base_learner.py`` and ``utils`` are pure Python, so stub
    packages stand in for ``learn2learn`` and ``learn2learn.algorithms`` and only those modules load.
    """
    if root is None:
        try:
            return importlib.import_module("learn2learn").algorithms.MAML
        except ImportError as err:
            raise MissingPeer(f"`import learn2learn` failed and no sdist was given (--learn2learn DIR or "
                              f"METARUN_L2L); get it with: {L2L_COMMAND}") from err
    package = Path(root) / "learn2learn"
    if not (package / "algorithms" / "maml.py").is_file():
        raise MissingPeer(f"{package / 'algorithms' / 'maml.py'} not found; get learn2learn's sdist with: "
                          f"{L2L_COMMAND}, then --learn2learn learn2learn-0.2.0")
    for name, path in (("learn2learn", package), ("learn2learn.algorithms", package / "algorithms")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        sys.modules[name] = stub
    return importlib.import_module("learn2learn.algorithms.maml").MAML


def maml(root, setting: dict, model: nn.Module, batch: TaskBatch):
    """learn2learn's MAML as its examples use it: ``clone()`` and ``adapt(loss)`` per task, ``backward()`` per
    task, the accumulated gradients averaged over the meta-batch."""
    learner = maml_class(root)(model, lr=setting["inner_lr"], first_order=False)

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            clone = learner.clone()
            for _ in range(setting["inner_steps"]):
                clone.adapt(F.cross_entropy(clone(sx), sy))
            F.cross_entropy(clone(qx), qy).backward()
        for p in learner.parameters():
            p.grad.mul_(1.0 / batch.num_tasks)

    return backward, []
