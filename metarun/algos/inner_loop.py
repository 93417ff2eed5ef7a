"""The differentiable inner loop of the MAML family (MAML, FOMAML, MAML++, ANIL, Meta-SGD): SGD steps on a task's
support set, pure over a parameter dict, through which the meta-gradient flows (second order) unless they are
first order; optionally checkpointed, so each step is recomputed in the backward pass instead of kept."""

import contextlib
from typing import Callable, Dict

import torch
from torch._C._functorch import is_functorch_wrapped_tensor
from torch.func import grad
from torch.utils.checkpoint import checkpoint

from metarun.models import second_order

Params = Dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]


def plain(params: Params, x) -> bool:
    """Whether ``torch.autograd`` can differentiate through ``params`` and ``x`` directly: no ``torch.func``
    transform wraps them (vmap) and torch.compile is not tracing (its autograd does not support the double
    backward through ``torch.autograd.grad``). There it does what ``torch.func`` does without wrapping every op in
    the transform, about 15% faster on small networks."""
    return not torch.compiler.is_compiling() and not any(
        is_functorch_wrapped_tensor(t) for t in [*params.values(), x])


def leaves(params: Params) -> Params:
    """Fresh leaves holding ``params``' values, whose gradients ``torch.autograd`` computes (under grad mode)."""
    return {name: p.detach().requires_grad_() for name, p in params.items()}


def flat(tensors: Params) -> torch.Tensor:
    """The tensors as one flat vector, in the dict's order: an update of every weight in a few ops."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflat(v: torch.Tensor, like: Params) -> Params:
    """``v`` cut into views shaped as the tensors of ``like``, in its order (``flat``'s inverse)."""
    return {name: piece.view(t.shape) for (name, t), piece in zip(like.items(), v.split([t.numel() for t in
                                                                                         like.values()]))}


def gradients(objective, params: Params, x, first_order: bool) -> Params:
    """The gradient of ``objective(params)`` (a loss on the batch ``x``), differentiable unless ``first_order``.

    ``torch.func.grad`` works everywhere (under vmap, without an outer graph in evaluation); where the tensors are
    ``plain``, ``torch.autograd.grad`` computes it while the outer graph is being recorded (a per-task loop in
    training), or where no graph is to be kept at all (evaluation, constants at first order).
    """
    direct = plain(params, x)
    if direct and (not torch.is_grad_enabled() or first_order and not any(p.requires_grad for p in params.values())):
        # no graph to keep, in evaluation (grad mode off) or for constants at first order (Reptile's and iMAML's
        # detached iterates): the gradient at fresh leaves
        with torch.enable_grad():
            inputs = leaves(params)
            return dict(zip(params, torch.autograd.grad(objective(inputs), list(inputs.values()),
                                                        materialize_grads=True)))
    if direct and all(p.requires_grad for p in params.values()):
        # each parameter through a view of its own: a task's initial parameters may be computed from one another
        # (a Proto-MAML head from the body's support embeddings), and the inner gradient of each is its own, as
        # torch.func.grad and the official code take it, not also the path through what was computed from it; the
        # graph is kept even first order, as the outer backward still needs that computation
        inputs = {name: p.view_as(p) for name, p in params.items()}
        with second_order.differentiated_twice() if not first_order else contextlib.nullcontext():
            value = objective(inputs)
        return dict(zip(params, torch.autograd.grad(value, list(inputs.values()), create_graph=not first_order,
                                                    retain_graph=True)))
    grads = grad(objective)(params)
    return {name: g.detach() for name, g in grads.items()} if first_order else grads


def inner_step(forward: Forward, params: Params, x, y, lr, loss, first_order: bool) -> Params:
    """One SGD step on (x, y) with a scalar ``lr`` or one per parameter; differentiable unless ``first_order``."""
    grads = gradients(lambda p: loss(forward(p, x), y), params, x, first_order)
    return {name: p - (lr[name] if isinstance(lr, dict) else lr) * grads[name] for name, p in params.items()}


def recomputed(step, fast: Params) -> Params:
    """``step(fast)``, its activations recomputed in the backward pass instead of kept (gradient checkpointing).

    Reentrant checkpointing, because ``torch.func.grad`` does not support the saved-tensor hooks of the other
    kind; so only ``loss.backward()`` reaches through it (not ``torch.autograd.grad``), and not under vmap.
    Tensors ``step`` reads from its closure (frozen layers, learned rates) still get their gradients: the
    recomputation's backward accumulates into them.
    """
    names = list(fast)
    outputs = checkpoint(lambda *tensors: tuple(step(dict(zip(names, tensors))).values()), *fast.values(),
                         use_reentrant=True)
    return dict(zip(names, outputs))


def trajectory(forward_at, fast: Params, x, y, lr_at, steps: int, loss, first_order: bool,
               recompute: bool = False) -> list:
    """The fast parameters after 0, 1, ..., ``steps`` inner SGD steps on (x, y); ``recompute``: checkpointed steps."""
    path = [fast]
    for step in range(steps):
        take = lambda p, step=step: inner_step(forward_at(step), p, x, y, lr_at(step), loss, first_order)  # noqa: E731
        path.append(recomputed(take, path[-1]) if recompute else take(path[-1]))
    return path
