"""iMAML: Rajeswaran, Finn, Kakade & Levine (2019), "Meta-Learning with Implicit Gradients", NeurIPS.

Protocol: a task's adapted parameters approximately solve the proximal problem (eq. 4)
    phi* = argmin_phi L_support(phi) + lam/2 ||phi - theta||^2
by ``inner_steps`` steps of plain gradient descent at ``inner_lr`` started at theta (the paper's iMAML-GD; its
Hessian-free inner solver is not implemented). The steps are taken without a graph, so memory does not grow
with their number. The meta-gradient is the implicit one (Lemma 1 and eq. 7):
    g = (I + H/lam)^-1 grad_phi L_query(phi*),   H the Hessian of L_support at phi*,
approximated by ``cg_steps`` conjugate-gradient iterations from zero with Hessian-vector products (the support
gradient's ``torch.func.vjp``, reverse over reverse), a fixed count so shapes stay static under vmap.
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
from metarun.algos.inner_loop import Forward, Params, gradients
from metarun.algos.objectives import Objective
from metarun.config.algos import IMAMLConfig


def dot(a: Params, b: Params) -> torch.Tensor:
    """The inner product of two parameter dicts, as flat vectors."""
    return sum((a[name] * b[name]).sum() for name in a)


def proximal_objective(forward: Forward, loss, x, y, anchor: Params, lam: float):
    """``phi -> loss(forward(phi, x), y) + lam/2 ||phi - anchor||^2``, the inner problem."""
    def objective(phi: Params) -> torch.Tensor:
        return loss(forward(phi, x), y) + 0.5 * lam * sum(((phi[n] - anchor[n]) ** 2).sum() for n in phi)
    return objective


def solve(forward: Forward, params: Params, x, y, settings, loss, steps: int):
    """Yield the parameters after 0, 1, ..., ``steps`` gradient steps on the proximal problem from ``params``,
    all detached (no graph: the meta-gradient is implicit), one at a time so a caller keeps only what it needs."""
    phi = {name: t.detach() for name, t in params.items()}
    objective = proximal_objective(forward, loss, x, y, phi, settings.lam)
    yield phi
    for _ in range(steps):
        step = gradients(objective, phi, x, first_order=True)
        phi = {name: p - settings.inner_lr * step[name] for name, p in phi.items()}
        yield phi


def solution(forward: Forward, params: Params, x, y, settings, loss, steps: int) -> Params:
    """The last of ``solve``'s iterates (the approximate phi*), holding no earlier one."""
    return deque(solve(forward, params, x, y, settings, loss, steps), maxlen=1).pop()


def conjugate_gradient(matvec, b: Params, steps: int) -> Params:
    """x ~ A^-1 b after ``steps`` CG iterations from x = 0, ``matvec(v) = A v`` with A symmetric positive definite.

    Always ``steps`` iterations (static under vmap); a residual that reaches exactly zero stops the updates
    instead of dividing zero by zero.
    """
    x = {name: torch.zeros_like(t) for name, t in b.items()}
    r, p = b, b
    rr = dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        curvature = dot(p, ap)
        alpha = rr / torch.where(curvature == 0, 1, curvature)
        x = {name: x[name] + alpha * p[name] for name in x}
        r = {name: r[name] - alpha * ap[name] for name in r}
        rr_next = dot(r, r)
        beta = rr_next / torch.where(rr == 0, 1, rr)
        p = {name: r[name] + beta * p[name] for name in p}
        rr = rr_next
    return x


def implicit_gradient(forward: Forward, phi: Params, x, y, query_gradient: Params, settings, loss) -> Params:
    """((1 + cg_damping) I + H/lam)^-1 ``query_gradient`` by ``cg_steps`` CG iterations, H the Hessian of the
    support loss at ``phi``: the support gradient's graph is built once and each product is a vjp through it."""
    _, hessian_product = vjp(grad(lambda p: loss(forward(p, x), y)), phi)

    def matvec(v: Params) -> Params:
        (hv,) = hessian_product(v)  # the Hessian is symmetric: v^T H = (H v)^T
        return {name: (1 + settings.cg_damping) * v[name] + hv[name] / settings.lam for name in v}

    return conjugate_gradient(matvec, query_gradient, settings.cg_steps)


def meta_loss(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings, objective: Objective):
    """The query loss at the inner solution and its metric; the loss's gradient with respect to ``params`` is the
    implicit meta-gradient (a surrogate: query loss + <theta, g> - <theta, g>, the last two detached where need be)."""
    phi = solution(forward, params, support_x, support_y, settings, objective.loss, settings.inner_steps)

    def query_loss(p: Params):
        predictions = forward(p, query_x)
        return objective.loss(predictions, query_y), predictions

    query_gradient, (loss, predictions) = grad_and_value(query_loss, has_aux=True)(phi)
    g = implicit_gradient(forward, phi, support_x, support_y, query_gradient, settings, objective.loss)
    pull = dot(params, {name: t.detach() for name, t in g.items()})
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
