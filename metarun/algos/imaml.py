"""iMAML: Rajeswaran, Finn, Kakade & Levine (2019), "Meta-Learning with Implicit Gradients", NeurIPS.

Protocol: a task's adapted parameters approximately solve the proximal problem (eq. 4)
    phi* = argmin_phi L_support(phi) + lam/2 ||phi - theta||^2
by ``inner_steps`` steps of plain gradient descent at ``inner_lr`` started at theta (the paper's iMAML-GD; its
Hessian-free inner solver is not implemented). The steps are taken without a graph, so memory does not grow
with their number. The meta-gradient is the implicit one (Lemma 1 and eq. 7):
    g = (I + H/lam)^-1 grad_phi L_query(phi*),   H the Hessian of L_support at phi*,
approximated by ``cg_steps`` conjugate-gradient iterations from zero with Hessian-vector products (the support
gradient's vjp, reverse over reverse), a fixed count so shapes stay static under vmap.
``cg_damping`` delta solves ((1 + delta) I + H/lam) g = grad L_query instead, for support losses with negative
curvature. ``meta_loss`` returns the query loss through a surrogate whose gradient with respect to theta is g.
Validation and meta-test solve the same proximal problem with ``test_inner_steps`` steps: theta is meta-learned
for the regularised solution (the authors' evaluation script can drop the proximal term, ``--lam 0``).
The paper's Omniglot setting (table 2): lam = 2, 5 CG steps, 16 (5-way) or 25 (20-way) inner steps, Adam.
"""

from collections import deque

import torch
from torch.func import grad, grad_and_value, vjp

from metarun.algos.base import Algorithm
from metarun.algos.inner_loop import Forward, Params, flat, gradients, leaves, plain, unflat
from metarun.algos.objectives import Objective
from metarun.config.algos import IMAMLConfig


def solve(forward: Forward, params: Params, x, y, settings, loss, steps: int):
    """Yield the parameters after 0, 1, ..., ``steps`` gradient steps on the proximal problem from ``params``,
    all detached (no graph: the meta-gradient is implicit), one at a time so a caller keeps only what it needs.

    The proximal term's gradient, lam (phi - theta), is taken in closed form: a step moves phi towards theta by
    inner_lr * lam (a lerp) and down the loss's gradient, on all weights as one flat vector, where the term
    through autograd cost a dozen ops per weight tensor."""
    weights = start = {name: t.detach() for name, t in params.items()}
    anchor = phi = flat(start)
    yield start
    for _ in range(steps):
        step = flat(gradients(lambda p: loss(forward(p, x), y), weights, x, first_order=True))
        phi = torch.add(torch.lerp(phi, anchor, settings.inner_lr * settings.lam), step, alpha=-settings.inner_lr)
        weights = unflat(phi, start)
        yield weights


def solution(forward: Forward, params: Params, x, y, settings, loss, steps: int) -> Params:
    """The last of ``solve``'s iterates (the approximate phi*), holding no earlier one."""
    return deque(solve(forward, params, x, y, settings, loss, steps), maxlen=1).pop()


def conjugate_gradient(matvec, b: torch.Tensor, steps: int) -> torch.Tensor:
    """x ~ A^-1 b after ``steps`` CG iterations from x = 0, on flat vectors, ``matvec(v) = A v`` with A symmetric
    positive definite.

    Always ``steps`` iterations (static under vmap); a residual that reaches exactly zero stops the updates
    instead of dividing zero by zero. Flat vectors, as the authors' ``cg_solve``: an iteration is a few ops, not a
    few per weight tensor.
    """
    x, r, p = torch.zeros_like(b), b, b
    rr = r.dot(r)
    for _ in range(steps):
        ap = matvec(p)
        curvature = p.dot(ap)
        alpha = rr / torch.where(curvature == 0, 1, curvature)
        x, r = torch.addcmul(x, alpha, p), torch.addcmul(r, alpha, ap, value=-1)
        rr_next = r.dot(r)
        p = torch.addcmul(r, rr_next / torch.where(rr == 0, 1, rr), p)
        rr = rr_next
    return x


def hessian_product(forward: Forward, phi: Params, x, y, loss):
    """``v -> H v``, H the Hessian at ``phi`` of the loss on (x, y): the gradient's graph is built once and each
    product is a backward through it (reverse over reverse; H is symmetric, so v^T H = (H v)^T)."""
    if plain(phi, x):
        with torch.enable_grad():
            inputs = leaves(phi)
            gradient = torch.autograd.grad(loss(forward(inputs, x), y), list(inputs.values()), create_graph=True,
                                           materialize_grads=True)
        return lambda v: dict(zip(phi, torch.autograd.grad(gradient, list(inputs.values()), [v[name] for name in phi],
                                                           retain_graph=True, materialize_grads=True)))
    _, product = vjp(grad(lambda p: loss(forward(p, x), y)), phi)
    return lambda v: product(v)[0]


def implicit_gradient(forward: Forward, phi: Params, x, y, query_gradient: Params, settings, loss) -> torch.Tensor:
    """((1 + cg_damping) I + H/lam)^-1 ``query_gradient`` by ``cg_steps`` CG iterations, H the Hessian of the
    support loss at ``phi``, as one flat vector (``flat``'s order of ``phi``)."""
    hessian_times = hessian_product(forward, phi, x, y, loss)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.add(v * (1 + settings.cg_damping), flat(hessian_times(unflat(v, phi))), alpha=1 / settings.lam)

    return conjugate_gradient(matvec, flat(query_gradient), settings.cg_steps)


def gradient_and_predictions(forward: Forward, phi: Params, x, y, loss) -> tuple:
    """The gradient at ``phi`` of the loss on (x, y), that loss and the predictions, all without a graph."""
    if plain(phi, x):
        with torch.enable_grad():
            inputs = leaves(phi)
            predictions = forward(inputs, x)
            value = loss(predictions, y)
            gradient = torch.autograd.grad(value, list(inputs.values()), materialize_grads=True)
        return dict(zip(phi, gradient)), value.detach(), predictions.detach()

    def loss_and_predictions(p: Params):
        predictions = forward(p, x)
        return loss(predictions, y), predictions

    gradient, (value, predictions) = grad_and_value(loss_and_predictions, has_aux=True)(phi)
    return gradient, value, predictions


def meta_loss(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings, objective: Objective):
    """The query loss at the inner solution and its metric; the loss's gradient with respect to ``params`` is the
    implicit meta-gradient (a surrogate: query loss + <theta, g> - <theta, g>, the last two detached where need be)."""
    phi = solution(forward, params, support_x, support_y, settings, objective.loss, settings.inner_steps)
    query_gradient, loss, predictions = gradient_and_predictions(forward, phi, query_x, query_y, objective.loss)
    g = implicit_gradient(forward, phi, support_x, support_y, query_gradient, settings, objective.loss)
    pull = flat(params).dot(g.detach())
    return loss.detach() + pull - pull.detach(), objective.metric(predictions, query_y)


def evaluate_task(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings,
                  objective: Objective):
    """Query metric after 0, 1, ..., ``test_inner_steps`` steps on the proximal problem: [steps + 1]."""
    path = solve(forward, params, support_x, support_y, settings, objective.loss, settings.test_inner_steps)
    return torch.stack([objective.metric(forward(phi, query_x), query_y) for phi in path])


def predict(forward: Forward, params: Params, support_x, support_y, query_x, settings, objective: Objective):
    """Query predictions after ``test_inner_steps`` steps on the proximal problem."""
    phi = solution(forward, params, support_x, support_y, settings, objective.loss, settings.test_inner_steps)
    return forward(phi, query_x)


def check(run_cfg) -> None:
    """Refuse a negative damping and an inner step that diverges on the proximal term alone."""
    algo = run_cfg.algo
    if algo.cg_damping < 0:
        raise ValueError(f"algo.cg_damping={algo.cg_damping} is negative, which can make the CG system indefinite; "
                         "set algo.cg_damping=0.0 (the paper's system) or a positive value")
    if algo.inner_lr * algo.lam >= 2:
        raise ValueError(f"algo.inner_lr={algo.inner_lr} times algo.lam={algo.lam} is >= 2, so gradient descent on the "
                         f"proximal term diverges; set algo.inner_lr below {2 / algo.lam:g} (e.g. 0.1 with lam=2)")


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, IMAMLConfig, check=check)
