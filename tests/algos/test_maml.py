"""MAML's inner step and meta-gradients against hand computations, with and without checkpointed inner steps."""

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import anil, inner_loop, maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import ANILConfig, MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models.network import functional_forward
from tests.synthetic import TinyCNN

MSE = OBJECTIVES["regression"]


def scalar_forward(params, x):
    return params["w"] * x


def tiny_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, generator=g) for _ in range(4)]  # support_x, support_y, query_x, query_y


def test_inner_step_is_a_hand_computed_sgd_step_on_a_linear_model():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    params = {"weight": torch.randn(2, 3, generator=g), "bias": torch.randn(2, generator=g)}
    forward = lambda p, x: x @ p["weight"].T + p["bias"]  # noqa: E731
    residual = forward(params, x) - y  # d/dpred of mean squared error is 2 * residual / numel
    grad_w = 2 * residual.T @ x / residual.numel()
    grad_b = 2 * residual.sum(0) / residual.numel()
    stepped = inner_loop.inner_step(forward, params, x, y, 0.1, MSE.loss, first_order=False)
    torch.testing.assert_close(stepped["weight"], params["weight"] - 0.1 * grad_w)
    torch.testing.assert_close(stepped["bias"], params["bias"] - 0.1 * grad_b)


def _meta_gradient(first_order, lr=0.3):
    w = torch.tensor(0.7, requires_grad=True)
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=lr, inner_steps=1, first_order=first_order))
    loss, _ = maml.meta_loss(scalar_forward, {"w": w}, *tiny_task(), cfg, MSE)
    (gradient,) = torch.autograd.grad(loss, w)
    return gradient


def test_one_step_meta_gradients_match_the_chain_rule_by_hand():
    sx, sy, qx, qy = tiny_task()
    w, lr = 0.7, 0.3
    # w' = w - lr * 2 mean(sx (w sx - sy));  L = mean((w' qx - qy)^2)
    adapted = w - lr * 2 * (sx * (w * sx - sy)).mean()
    dloss_dadapted = 2 * (qx * (adapted * qx - qy)).mean()
    dadapted_dw = 1 - 2 * lr * (sx * sx).mean()
    torch.testing.assert_close(_meta_gradient(first_order=False), dloss_dadapted * dadapted_dw)
    # first order: the query gradient at the adapted parameters
    torch.testing.assert_close(_meta_gradient(first_order=True), dloss_dadapted)
    assert not torch.isclose(_meta_gradient(False), _meta_gradient(True))


def test_first_order_meta_gradient_equals_query_gradient_at_adapted_params_on_an_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    forward = lambda p, x: torch.func.functional_call(model, p, (x,))  # noqa: E731
    params = dict(model.named_parameters())
    sx, qx = torch.randn(6, 1), torch.randn(6, 1)
    sy, qy = torch.sin(sx), torch.sin(qx)
    grads = {}
    for first_order in (True, False):
        cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=3, first_order=first_order))
        loss, _ = maml.meta_loss(forward, params, sx, sy, qx, qy, cfg, MSE)
        grads[first_order] = torch.autograd.grad(loss, list(params.values()))
    path = inner_loop.trajectory(lambda step: forward, params, sx, sy, lambda step: 0.1, 3, MSE.loss, first_order=True)
    adapted = {k: v.detach().requires_grad_() for k, v in path[-1].items()}
    query_grad = torch.autograd.grad(MSE.loss(forward(adapted, qx), qy), list(adapted.values()))
    for fo, qg in zip(grads[True], query_grad):
        torch.testing.assert_close(fo, qg)
    assert any(not torch.allclose(a, b) for a, b in zip(grads[True], grads[False]))


def test_evaluate_task_curve_starts_before_adaptation_and_improves():
    sx, sy, qx, qy = tiny_task()
    sy, qy = 2.0 * sx, 2.0 * qx  # a task the scalar model can fit
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.2, test_inner_steps=4))
    curve = maml.evaluate_task(scalar_forward, {"w": torch.tensor(0.0)}, sx, sy, qx, qy, cfg, MSE)
    assert curve.shape == (5,)
    torch.testing.assert_close(curve[0], (qy ** 2).mean())
    assert torch.all(curve[1:] < curve[:-1])


@pytest.mark.parametrize("algo, options", [
    ("maml", {}),
    ("maml", {"learned_lrs": True, "per_step_bn": True, "multi_step_loss": True}),  # meta tensors read in closures
    ("anil", {}),  # a frozen body read in a closure
])
def test_checkpointed_inner_steps_give_the_same_meta_gradient(algo, options):
    algorithm, schema = (maml, MAMLConfig) if algo == "maml" else (anil, ANILConfig)
    torch.manual_seed(0)
    model = TinyCNN((1, 12, 12), 3, width=4)
    labels = torch.arange(3).repeat(2, 2)
    batch = TaskBatch(torch.randn(2, 6, 1, 12, 12), labels, torch.randn(2, 6, 1, 12, 12), labels)
    gradients = []
    for checkpoint_inner in (False, True):
        cfg = OmegaConf.structured(schema(inner_lr=0.3, inner_steps=3, checkpoint_inner=checkpoint_inner, **options))
        settings = maml.at_iteration(OmegaConf.to_object(cfg), 1) if algo == "maml" else cfg
        params = getattr(algorithm, "meta_params", lambda m, c: dict(m.named_parameters()))(model, cfg)
        params = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
        forward = functional_forward(model)
        task = lambda p, *t: algorithm.meta_loss(forward, p, *t, settings, OBJECTIVES["classification"])  # noqa: E731
        losses, _ = map_tasks(task, params, batch, "loop")
        losses.mean().backward()  # checkpointed steps support backward(), which the training loop uses
        gradients.append({name: p.grad for name, p in params.items()})
    assert all(gradient is not None for gradient in gradients[1].values())
    for name, gradient in gradients[0].items():
        # atol: a conv bias before batch norm has a zero gradient up to rounding (~1e-7)
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-5, atol=1e-6, msg=name)
