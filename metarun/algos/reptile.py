"""Reptile: Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv:1803.02999.

Protocol: on each task, ``inner_steps`` steps of SGD or Adam (``inner_optimizer``; the paper uses Adam with
beta1 = 0) on mini-batches of ``inner_batch`` support examples give adapted weights W; the outer update moves
the initialisation towards them, theta <- theta + eps * (mean W - theta), with eps annealed linearly to 0.

How it fits the shared loop: ``meta_loss`` returns the surrogate 0.5 * ||theta - stop_grad(W)||^2, whose
gradient averaged over the meta-batch is theta - mean W. With ``optim.name=sgd optim.schedule=linear
optim.final_lr=0`` and ``optim.lr`` = eps (the presets' setting), the optimiser step is exactly the paper's
interpolation; with the default Adam it is the paper's "Adam on theta - W" variant (section 3). The logged
train loss is that surrogate; the train metric is the query metric after adaptation. Meta-test adapts with
``test_inner_steps`` steps of the same inner optimiser (the paper evaluates with 50).
"""

import math

import torch

from metarun.algos.base import Algorithm
from metarun.algos.inner_loop import Params, flat, gradients, unflat
from metarun.config.algos import ReptileConfig


def _batches(size: int, batch: int, steps: int) -> list:
    """Support indices for each inner step: a fixed interleaving permutation, cycled in ``batch``-sized slices."""
    # golden-ratio order: deterministic (pure under vmap, no RNG) and it mixes the sampler's class-major rows
    order = torch.argsort(torch.arange(size) * 0.6180339887498949 % 1.0)
    batch = min(batch or size, size)
    return [order[(step * batch + torch.arange(batch)) % size] for step in range(steps)]


def adapt(forward, params: Params, x, y, settings, loss, steps: int) -> list:
    """Weights after 0, 1, ..., ``steps`` inner optimiser steps on batches of (x, y), detached from ``params``.

    The optimiser steps all weights as one flat vector, Adam by ``torch.optim.Adam``'s fused ops (lerp, addcmul,
    addcdiv): a few kernels a step, where one per weight tensor and op cost as much as the gradient on a small
    network."""
    start = {name: p.detach() for name, p in params.items()}
    weights = flat(start)
    m, v = torch.zeros_like(weights), torch.zeros_like(weights)
    beta1, beta2 = settings.inner_betas
    path = [start]
    for step, index in enumerate(_batches(x.shape[0], settings.inner_batch, steps), start=1):
        g = flat(gradients(lambda p: loss(forward(p, x[index]), y[index]), unflat(weights, start), x, first_order=True))
        if settings.inner_optimizer == "adam":
            m, v = torch.lerp(m, g, 1 - beta1), torch.addcmul(v * beta2, g, g, value=1 - beta2)
            denominator = (v.sqrt() / math.sqrt(1 - beta2 ** step)).add_(1e-8)
            weights = torch.addcdiv(weights, m, denominator, value=-settings.inner_lr / (1 - beta1 ** step))
        else:
            weights = torch.add(weights, g, alpha=-settings.inner_lr)
        path.append(unflat(weights, start))
    return path


def meta_loss(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Surrogate 0.5 * ||params - adapted||^2 (gradient: params - adapted) and the adapted query metric."""
    adapted = adapt(forward, params, support_x, support_y, settings, objective.loss, settings.inner_steps)[-1]
    surrogate = 0.5 * ((flat(params) - flat(adapted)) ** 2).sum()
    return surrogate, objective.metric(forward(adapted, query_x), query_y)


def evaluate_task(forward, params, support_x, support_y, query_x, query_y, settings, objective):
    """Query metric after 0, 1, ..., ``test_inner_steps`` inner optimiser steps: [steps + 1]."""
    path = adapt(forward, params, support_x, support_y, settings, objective.loss, settings.test_inner_steps)
    return torch.stack([objective.metric(forward(p, query_x), query_y) for p in path])


def predict(forward, params, support_x, support_y, query_x, settings, objective):
    """Query predictions after ``test_inner_steps`` inner optimiser steps."""
    adapted = adapt(forward, params, support_x, support_y, settings, objective.loss, settings.test_inner_steps)[-1]
    return forward(adapted, query_x)


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, ReptileConfig)
