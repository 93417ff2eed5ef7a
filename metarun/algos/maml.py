"""MAML: Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML.

Protocol: adapt with ``inner_steps`` steps of SGD at ``inner_lr`` on the support set, score the adapted
parameters on the query set, and meta-learn the initialisation by differentiating that query loss through
the inner loop (second order). ``first_order`` (FOMAML, section 5.2) treats the inner gradients as constants,
so the meta-gradient is the query gradient at the adapted parameters. Meta-test adapts with
``test_inner_steps``. Every function is pure over a parameter dict and handles one task; the engine maps it
over the meta-batch.
"""

from typing import Callable, Dict

import torch
from torch.func import grad

from metarun.objectives import Objective

Params = Dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]


def inner_step(forward: Forward, params: Params, x, y, lr: float, loss, first_order: bool) -> Params:
    """One SGD step on (x, y); differentiable w.r.t. ``params`` unless ``first_order``."""
    grads = grad(lambda p: loss(forward(p, x), y))(params)
    if first_order:
        grads = {name: g.detach() for name, g in grads.items()}
    return {name: p - lr * grads[name] for name, p in params.items()}


def adapt(forward: Forward, params: Params, x, y, lr: float, steps: int, loss, first_order: bool) -> Params:
    """``steps`` inner SGD steps from ``params`` on the support set (x, y)."""
    for _ in range(steps):
        params = inner_step(forward, params, x, y, lr, loss, first_order)
    return params


def meta_loss(forward: Forward, params: Params, support_x, support_y, query_x, query_y, cfg, objective: Objective):
    """Query loss and metric of one task after the training-time inner loop."""
    adapted = adapt(forward, params, support_x, support_y, cfg.inner_lr, cfg.inner_steps, objective.loss, cfg.first_order)
    predictions = forward(adapted, query_x)
    return objective.loss(predictions, query_y), objective.metric(predictions, query_y)


def evaluate_task(forward: Forward, params: Params, support_x, support_y, query_x, query_y, cfg, objective: Objective):
    """Query metric of one task after 0, 1, ..., ``test_inner_steps`` test-time inner steps: [steps + 1]."""
    curve = [objective.metric(forward(params, query_x), query_y)]
    for _ in range(cfg.test_inner_steps):
        params = inner_step(forward, params, support_x, support_y, cfg.inner_lr, objective.loss, first_order=True)
        curve.append(objective.metric(forward(params, query_x), query_y))
    return torch.stack(curve)
