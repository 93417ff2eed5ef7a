"""iMAML: the implicit meta-gradient against its closed form on linear regression and against finite differences
through a converged inner solve, the inner steps by hand, vmap and threads against the loop, load_learner and the
one-line errors."""

import pytest
import torch

from metarun import load_learner
from metarun.algos import imaml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import IMAMLConfig
from metarun.models.network import functional_forward
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import assert_mapped_equals_loop, few_shot_accuracy
from tests.synthetic import TinyCNN, image_config

MSE, CE = OBJECTIVES["regression"], OBJECTIVES["classification"]


def linear(params, x):
    """A linear model x w + b, whose squared error is quadratic in its parameters."""
    return x @ params["w"] + params["b"]


def regression_task(seed=0, d=3):
    """float64 support (8 points) and query (6 points) of a linear regression in ``d`` dimensions, and theta."""
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(8, d, generator=g, dtype=torch.float64), torch.randn(6, d, generator=g, dtype=torch.float64)
    sy, qy = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    theta = {"w": torch.randn(d, generator=g, dtype=torch.float64),
             "b": torch.randn((), generator=g, dtype=torch.float64)}
    return (sx, sy, qx, qy), {name: t.requires_grad_() for name, t in theta.items()}


def design(x):
    """[x, 1]: the linear model's parameters (w, b) as one vector."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def meta_gradient(loss, params) -> torch.Tensor:
    """d loss / d params, flattened in the order (w, b)."""
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_meta_gradient_is_the_closed_form_on_linear_regression(damping):
    (sx, sy, qx, qy), theta = regression_task()
    lam = 2.0
    # enough inner steps to converge (the slowest direction contracts by 1 - 0.2 * lam per step at worst) and as many
    # CG iterations as parameters, where CG is exact
    cfg = IMAMLConfig(inner_lr=0.2, inner_steps=150, lam=lam, cg_steps=4, cg_damping=damping)
    loss, metric = imaml.meta_loss(linear, theta, sx, sy, qx, qy, cfg, MSE)
    # L_s = |A phi - y|^2 / n, so H = 2 A^T A / n; phi* = (H + lam I)^-1 (2 A^T y / n + lam theta)
    a, aq, t = design(sx), design(qx), torch.cat([theta["w"], theta["b"].reshape(1)]).detach()
    hessian, eye = 2 * a.T @ a / len(a), torch.eye(4, dtype=torch.float64)
    phi = torch.linalg.solve(hessian + lam * eye, 2 * a.T @ sy / len(a) + lam * t)
    query_gradient = 2 * aq.T @ (aq @ phi - qy) / len(aq)
    expected = torch.linalg.solve((1 + damping) * eye + hessian / lam, query_gradient)
    torch.testing.assert_close(meta_gradient(loss, theta), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss, ((aq @ phi - qy) ** 2).mean(), rtol=1e-9, atol=0.0)
    torch.testing.assert_close(metric, loss.detach())
    # without damping it is the exact derivative of L_q(phi*(theta)): (H/lam + I)^-1 = lam (H + lam I)^-1
    if damping == 0.0:
        torch.testing.assert_close(expected, lam * torch.linalg.solve(hessian + lam * eye, query_gradient))


def test_meta_gradient_matches_finite_differences_through_a_converged_inner_solve_on_an_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    forward = functional_forward(model)
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.randn(6, 1, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64)
    sy, qy = torch.sin(2 * sx), torch.sin(2 * qx)
    # 13 parameters: 13 CG iterations solve the system; 100 steps converge the inner problem (checked below), so
    # the implicit gradient is the derivative of the query loss at the solution
    cfg = IMAMLConfig(inner_lr=0.3, inner_steps=100, lam=2.0, cg_steps=13)
    loss, _ = imaml.meta_loss(forward, params, sx, sy, qx, qy, cfg, MSE)
    analytic = torch.autograd.grad(loss, list(params.values()))
    phi = imaml.solution(forward, params, sx, sy, cfg, MSE.loss, cfg.inner_steps)

    def proximal_objective(p):
        return MSE.loss(forward(p, sx), sy) + 0.5 * cfg.lam * sum(((p[n] - params[n]) ** 2).sum() for n in p)

    stationary = torch.func.grad(proximal_objective)(phi)
    assert max(t.abs().max() for t in stationary.values()) < 1e-12

    def query_loss(theta):
        phi = imaml.solution(forward, theta, sx, sy, cfg, MSE.loss, cfg.inner_steps)
        return MSE.loss(forward(phi, qx), qy)

    base = {name: t.detach() for name, t in params.items()}
    for (name, t), gradient in zip(base.items(), analytic):
        numeric = torch.zeros(t.numel(), dtype=torch.float64)
        for i in range(t.numel()):
            step = torch.zeros(t.numel(), dtype=torch.float64)
            step[i] = 1e-6
            plus = query_loss({**base, name: t + step.view_as(t)})
            minus = query_loss({**base, name: t - step.view_as(t)})
            numeric[i] = (plus - minus) / 2e-6
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradient.reshape(-1), numeric, rtol=1e-5, atol=1e-8, msg=name)


def test_inner_steps_are_gradient_steps_on_the_proximal_problem_by_hand():
    (sx, sy, qx, qy), theta = regression_task(seed=1)
    cfg = IMAMLConfig(inner_lr=0.05, test_inner_steps=3, lam=4.0)
    a, t = design(sx), torch.cat([theta["w"], theta["b"].reshape(1)]).detach()
    phis = [t]
    for _ in range(3):
        # d/dphi of |A phi - y|^2 / n + lam/2 |phi - theta|^2
        phis.append(phis[-1] - 0.05 * (2 * a.T @ (a @ phis[-1] - sy) / len(a) + 4.0 * (phis[-1] - t)))
    curve = torch.stack([((design(qx) @ phi - qy) ** 2).mean() for phi in phis])
    torch.testing.assert_close(imaml.evaluate_task(linear, theta, sx, sy, qx, qy, cfg, MSE), curve)
    torch.testing.assert_close(imaml.predict(linear, theta, sx, sy, qx, cfg, MSE), design(qx) @ phis[-1])
    assert not torch.allclose(phis[-1], t)
    # no graph through the inner steps: memory does not grow with their number
    path = imaml.solve(linear, theta, sx, sy, cfg, MSE.loss, 3)
    assert not any(p.requires_grad for phi in path for p in phi.values())


@pytest.mark.parametrize("mapping", ["vmap", "threads"])
def test_mapped_tasks_equal_the_loop(mapping):
    cfg = IMAMLConfig(inner_lr=0.1, inner_steps=3, test_inner_steps=2, cg_steps=3, cg_damping=0.1)
    # float64: the CG solve amplifies the mappings' float32 rounding differences past 1e-4 for some initialisations
    looped = assert_mapped_equals_loop(imaml.ALGORITHM, cfg, TinyCNN((1, 12, 12), 3, width=4).double(), mapping)
    assert looped["curve"].shape == (3, 3) and looped["0.weight"].abs().sum() > 0


def test_load_learner_adapts_and_predicts(tmp_path):
    # a loop over tasks: no start-up timing of the task mappings
    run(image_config(["algo=imaml", "algo.inner_steps=3", "algo.test_inner_steps=5", "algo.cg_steps=2",
                      "train.iterations=10", "eval.episodes=10", "hardware.task_parallel=loop"],
                     output_dir=tmp_path, noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    assert few_shot_accuracy(learner, (60, 61, 62, 63, 64)) > 0.6  # chance is 0.2


@pytest.mark.parametrize("overrides, message", [
    (["algo.lam=0"], r"^algo.lam must be > 0, got 0.0; set e.g. algo.lam=0.01$"),
    (["algo.cg_steps=0"], r"^algo.cg_steps must be > 0, got 0; set e.g. algo.cg_steps=1$"),
    (["algo.cg_damping=-0.5"], r"^algo.cg_damping=-0.5 is negative, which can make the CG system indefinite; "
                               r"set algo.cg_damping=0.0 \(the paper's system\) or a positive value$"),
    (["algo.inner_lr=0.5", "algo.lam=4"], r"^algo.inner_lr=0.5 times algo.lam=4.0 is >= 2, so gradient descent on "
                                          r"the proximal term diverges; set algo.inner_lr below 0.5 \(e.g. 0.1 with "
                                          r"lam=2\)$"),
])
def test_bad_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_components(image_config(["algo=imaml", *overrides]))
