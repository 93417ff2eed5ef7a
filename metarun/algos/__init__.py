"""Algorithms: one module each, exposing pure per-task functions ``meta_loss`` and ``evaluate_task``."""

from types import ModuleType

from metarun.algos import maml

# fomaml is the first-order configuration of the same code (conf/algo/fomaml.yaml sets first_order)
ALGORITHMS = {"maml": maml, "fomaml": maml}


def get_algorithm(name: str) -> ModuleType:
    """The algorithm module for ``algo.name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name={name} is not available; choose one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
