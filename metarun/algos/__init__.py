"""Algorithms: one module each, a paper reference on top and pure per-task functions below, ending in the
module's ``ALGORITHM`` (a ``metarun.algos.base.Algorithm``: the interface every algorithm provides). A config
names it by import path, ``algo._target_``; fomaml is the first-order configuration of maml's code
(conf/algo/fomaml.yaml sets first_order)."""

from metarun.algos.base import Algorithm

__all__ = ["Algorithm"]
