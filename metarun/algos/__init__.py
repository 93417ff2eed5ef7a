"""Algorithms: one module each, selected by ``algo.name`` through ``ALGORITHMS``.

An algorithm module exposes pure per-task functions over a parameter dict (the engine maps them over the
meta-batch with vmap or a loop):
    meta_loss(forward, params, sx, sy, qx, qy, cfg, objective) -> (loss, metric)   the outer loss of one task
    evaluate_task(forward, params, sx, sy, qx, qy, cfg, objective) -> [steps + 1]  query metric after 0.. steps
    predict(forward, params, sx, sy, qx, cfg, objective) -> [Q, out]                 query outputs after adapting
and may define:
    meta_params(model, cfg) -> dict   the meta-learned tensors (default: the model's parameters). Extra
        tensors (learned learning rates, per-step batch norm) use names starting ``meta/``; the algorithm
        separates them from the model's parameters before calling ``forward``.
    at_iteration(cfg, iteration) -> cfg   the settings for one outer iteration (annealed quantities).
    HEAD = False   the backbone is used without its final layer (an embedding, e.g. ProtoNet).
    OBJECTIVES = ("classification",)   the objectives it supports (default: all).
The outer update is the loop's optimiser step on ``mean(loss)``; Reptile gets its interpolation through a
surrogate loss (see ``metarun.algos.reptile``).
"""

from types import ModuleType

from metarun.algos import anil, maml, metasgd, protonet, reptile

# fomaml is the first-order configuration of the same code (conf/algo/fomaml.yaml sets first_order)
ALGORITHMS = {"maml": maml, "fomaml": maml, "anil": anil, "metasgd": metasgd, "reptile": reptile, "protonet": protonet}


def get_algorithm(name: str) -> ModuleType:
    """The algorithm module for ``algo.name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name={name} is not available; choose one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
