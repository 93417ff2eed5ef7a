"""Meta-SGD, ANIL, Reptile, ProtoNet and the MAML++ options against MAML and hand computations."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import anil, inner_loop, maml, metasgd, protonet, reptile
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import ANILConfig, MAMLConfig, MetaSGDConfig, ProtoNetConfig, ReptileConfig
from metarun.config.run import OptimConfig
from metarun.models.network import functional_forward
from metarun.runner.train import build_optimizer
from tests.algos.shared import assert_mapped_equals_loop
from tests.synthetic import TinyCNN

MSE, CE = OBJECTIVES["regression"], OBJECTIVES["classification"]


def mlp_task(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    sx, qx = torch.randn(6, 1), torch.randn(6, 1)
    return model, (sx, torch.sin(sx), qx, torch.sin(qx))


@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_with_frozen_equal_learning_rates_equals_maml(steps):
    model, task = mlp_task()
    forward = functional_forward(model)
    cfg = OmegaConf.structured(MetaSGDConfig(inner_lr=0.1, inner_steps=steps))
    params = metasgd.meta_params(model, cfg)
    frozen = {name: (t.detach() if name.startswith(maml.LR) else t) for name, t in params.items()}
    weights = dict(model.named_parameters())
    loss_sgd, _ = metasgd.meta_loss(forward, frozen, *task, cfg, MSE)
    loss_maml, _ = maml.meta_loss(forward, weights, *task, OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=steps)), MSE)
    torch.testing.assert_close(loss_sgd, loss_maml)
    for a, b in zip(torch.autograd.grad(loss_sgd, list(weights.values())), torch.autograd.grad(loss_maml, list(weights.values()))):
        torch.testing.assert_close(a, b)
    # with the rates learnable, they receive a meta-gradient of their own shape
    lr_grads = torch.autograd.grad(metasgd.meta_loss(forward, params, *task, cfg, MSE)[0], [params[f"{maml.LR}0.weight"]])
    assert lr_grads[0].shape == (1, 8, 1) and lr_grads[0].abs().sum() > 0


def test_anil_changes_only_the_head_in_the_inner_loop_and_meta_learns_the_body():
    model, task = mlp_task()
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(ANILConfig(inner_lr=0.1, inner_steps=3))
    assert anil.head_prefix(params, cfg) == "2."
    fast, forward_at, lr_at = maml.split_for_inner_loop(forward, params, cfg, anil._head(params, cfg))
    adapted = inner_loop.trajectory(forward_at, fast, task[0], task[1], lr_at, 3, MSE.loss, False)[-1]
    assert set(adapted) == {"2.weight", "2.bias"}
    assert not torch.allclose(adapted["2.weight"], params["2.weight"])
    loss, _ = anil.meta_loss(forward, params, *task, cfg, MSE)
    body_grad = torch.autograd.grad(loss, params["0.weight"])[0]
    assert body_grad.abs().sum() > 0
    with pytest.raises(ValueError, match="algo.head=body. matches no parameter"):
        anil.meta_loss(forward, params, *task, OmegaConf.structured(ANILConfig(head="body.")), MSE)


def test_reptile_outer_step_is_the_interpolation_towards_the_adapted_weights():
    model, task = mlp_task()
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(ReptileConfig(inner_lr=0.05, inner_steps=3, inner_batch=4, inner_optimizer="sgd"))
    tasks = [mlp_task(seed)[1] for seed in (1, 2)]
    adapted = [reptile.adapt(forward, params, sx, sy, cfg, MSE.loss, 3)[-1] for sx, sy, _, _ in tasks]
    # one plain SGD inner step by hand on the first batch of task 1
    sx, sy = tasks[0][0], tasks[0][1]
    index = reptile._batches(6, 4, 1)[0]
    first = reptile.adapt(forward, params, sx, sy, cfg, MSE.loss, 1)[-1]
    grads = torch.autograd.grad(MSE.loss(forward(params, sx[index]), sy[index]), list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        torch.testing.assert_close(first[name], p.detach() - 0.05 * g)
    # the loop's step: SGD at lr eps on the mean surrogate gives theta + eps * (mean W - theta)
    eps = 0.3
    optimizer, _ = build_optimizer(OmegaConf.structured(OptimConfig(name="sgd", lr=eps)), params, 10)
    before = {name: p.detach().clone() for name, p in params.items()}
    torch.stack([reptile.meta_loss(forward, params, *t, cfg, MSE)[0] for t in tasks]).mean().backward()
    optimizer.step()
    for name, p in params.items():
        expected = before[name] + eps * ((adapted[0][name] + adapted[1][name]) / 2 - before[name])
        torch.testing.assert_close(p.detach(), expected)


def test_reptile_adam_inner_steps_reduce_the_support_loss():
    model, (sx, sy, _, _) = mlp_task()
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(ReptileConfig(inner_lr=0.01, inner_batch=None))
    path = reptile.adapt(forward, params, sx, sy, cfg, MSE.loss, 20)
    assert MSE.loss(forward(path[-1], sx), sy) < MSE.loss(forward(path[0], sx), sy)


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.99)])
def test_reptile_adam_inner_steps_are_torch_adams_steps(betas):
    model, (sx, sy, _, _) = mlp_task()
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(ReptileConfig(inner_lr=0.01, inner_batch=4, inner_betas=list(betas)))
    path = reptile.adapt(forward, params, sx, sy, cfg, MSE.loss, 3)
    fast = [p.detach().clone().requires_grad_() for p in params.values()]
    adam = torch.optim.Adam(fast, lr=0.01, betas=betas, eps=1e-8)
    for step, index in enumerate(reptile._batches(len(sx), 4, 3), start=1):
        adam.zero_grad()
        MSE.loss(forward(dict(zip(params, fast)), sx[index]), sy[index]).backward()
        adam.step()
        for name, expected in zip(params, fast):
            assert path[step][name].shape == expected.shape
            torch.testing.assert_close(path[step][name], expected.detach(), msg=f"step {step} {name}")
    assert not torch.allclose(path[-1]["0.weight"], path[0]["0.weight"])


@pytest.mark.parametrize("mapping", ["vmap", "threads"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_reptile_mapped_tasks_equal_the_loop(mapping, optimizer):
    cfg = OmegaConf.structured(ReptileConfig(inner_lr=0.05, inner_steps=3, test_inner_steps=2, inner_batch=4,
                                             inner_optimizer=optimizer))
    # float64: Adam divides each gradient by its own size, so in float32 the rounding noise of gradients that are
    # zero in exact arithmetic (the biases before batch norm), which differs between mappings, becomes real steps
    looped = assert_mapped_equals_loop(reptile.ALGORITHM, cfg, TinyCNN((1, 12, 12), 3, width=4).double(), mapping)
    assert looped["curve"].shape == (3, 3) and looped["0.weight"].abs().sum() > 0


def test_gradients_without_a_graph_to_keep_are_torch_funcs_without_the_transform():
    model, (sx, sy, _, _) = mlp_task()
    forward, params = functional_forward(model), dict(model.named_parameters())
    seen = []

    def objective(p):  # the last weight unused: its gradient is zero, as torch.func.grad gives it
        seen.append(any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in p.values()))
        return MSE.loss(forward({**p, "2.bias": p["2.bias"].detach()}, sx), sy)

    expected = torch.func.grad(objective)(params)
    constants = {name: p.detach() for name, p in params.items()}
    with torch.no_grad():  # evaluation: the meta-parameters themselves
        evaluated = inner_loop.gradients(objective, params, sx, first_order=False)
    detached = inner_loop.gradients(objective, constants, sx, first_order=True)  # Reptile's and iMAML's iterates
    assert seen == [True, False, False]
    for name in params:
        torch.testing.assert_close(evaluated[name], expected[name], msg=name)
        torch.testing.assert_close(detached[name], expected[name], msg=name)
        assert not evaluated[name].requires_grad and not detached[name].requires_grad
    assert not expected["2.bias"].any() and expected["0.weight"].abs().sum() > 0


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    torch.manual_seed(0)
    forward = lambda p, x: x @ p["w"]  # noqa: E731  a linear embedding
    params = {"w": torch.randn(4, 3)}
    sx, qx = torch.randn(6, 4), torch.randn(5, 4)
    sy = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = protonet.logits(forward, params, sx, sy, qx, ProtoNetConfig())
    support, query = forward(params, sx), forward(params, qx)
    prototypes = torch.stack([support[sy == c].mean(0) for c in range(3)])
    torch.testing.assert_close(logits[:, :3], -torch.cdist(query, prototypes) ** 2, rtol=1e-5, atol=1e-5)
    assert torch.isinf(logits[:, 3:]).all() and (logits[:, 3:] < 0).all()
    loss, acc = protonet.meta_loss(forward, params, sx, sy, qx, torch.tensor([0, 1, 2, 0, 1]),
                                     ProtoNetConfig(), CE)
    assert torch.isfinite(loss) and 0 <= acc <= 1


def scalar_forward(params, x):
    return params["w"] * x


def test_multi_step_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    sx, sy, qx, qy = (torch.randn(5, generator=g) for _ in range(4))
    w0, lr = 0.7, 0.3
    settings = maml.at_iteration(MAMLConfig(inner_lr=lr, inner_steps=2, multi_step_loss=True, msl_iterations=100), 50)
    a, b = settings.step_weights
    assert a == pytest.approx(0.25) and b == pytest.approx(0.75)
    loss, _ = maml.meta_loss(scalar_forward, {"w": torch.tensor(w0)}, sx, sy, qx, qy, settings, MSE)

    def step(w):
        return w - lr * 2 * (sx * (w * sx - sy)).mean()

    w1 = step(torch.tensor(w0))
    w2 = step(w1)
    torch.testing.assert_close(loss, a * ((w1 * qx - qy) ** 2).mean() + b * ((w2 * qx - qy) ** 2).mean())


def test_multi_step_weights_anneal_from_uniform_onto_the_last_step():
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=5, multi_step_loss=True, msl_iterations=1000))
    assert maml.step_weights(cfg, 0) == pytest.approx([0.2] * 5)
    late = maml.step_weights(cfg, 5000)
    assert sum(late) == pytest.approx(1.0) and late[:4] == pytest.approx([0.006] * 4)
    assert maml.step_weights(OmegaConf.structured(MAMLConfig(inner_steps=3)), 0) == [0.0, 0.0, 1.0]


def test_derivative_order_annealing_is_first_order_only_for_the_first_iterations():
    cfg = MAMLConfig(first_order_iterations=10)
    assert maml.at_iteration(cfg, 10).first_order and not maml.at_iteration(cfg, 11).first_order


def test_learned_per_step_rates_are_used_step_by_step():
    g = torch.Generator().manual_seed(0)
    sx, sy, qx, qy = (torch.randn(5, generator=g) for _ in range(4))
    params = {"w": torch.tensor(0.7), f"{maml.LR}w": torch.tensor([0.1, 0.4], requires_grad=True)}
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    loss, _ = maml.meta_loss(scalar_forward, params, sx, sy, qx, qy, cfg, MSE)
    w = torch.tensor(0.7)
    for lr in (0.1, 0.4):
        w = w - lr * 2 * (sx * (w * sx - sy)).mean()
    torch.testing.assert_close(loss, ((w * qx - qy) ** 2).mean())
    assert torch.autograd.grad(loss, params[f"{maml.LR}w"])[0].abs().min() > 0


def test_per_step_batch_norm_copies_are_used_per_step_and_meta_learned():
    torch.manual_seed(0)
    model = TinyCNN((1, 12, 12), 3, width=4)
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2, test_inner_steps=4, per_step_bn=True, learned_lrs=True, inner_lr=0.1))
    params = maml.meta_params(model, cfg)
    assert f"{maml.BN}1.weight" in params and "1.weight" not in params and params[f"{maml.BN}1.weight"].shape == (3, 4)
    assert f"{maml.LR}0.weight" in params and f"{maml.LR}{maml.BN}1.weight" not in params
    forward = functional_forward(model)
    x, y = torch.randn(6, 1, 12, 12), torch.tensor([0, 0, 1, 1, 2, 2])
    loss, _ = maml.meta_loss(forward, params, x, y, x, y, cfg, CE)
    grad = torch.autograd.grad(loss, params[f"{maml.BN}1.weight"])[0]
    assert (grad.abs().sum(1) > 0).all()  # step 0 and 1 (support) and step 2 (query) copies all matter
    assert maml.evaluate_task(forward, params, x, y, x, y, cfg, CE).shape == (5,)


@pytest.mark.parametrize("schedule, middle", [("constant", 1.0), ("linear", 0.55), ("cosine", 0.55)])
def test_learning_rate_schedules_go_from_lr_to_final_lr(schedule, middle):
    params = {"w": torch.nn.Parameter(torch.zeros(()))}
    optimizer, scheduler = build_optimizer(OmegaConf.structured(OptimConfig(lr=1.0, schedule=schedule, final_lr=0.1)), params, 10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step(), scheduler.step()
    assert rates[0] == 1.0 and rates[5] == pytest.approx(middle)
    assert scheduler.get_last_lr()[0] == pytest.approx(1.0 if schedule == "constant" else 0.1)
    assert math.isfinite(sum(rates))


def test_step_schedule_multiplies_by_gamma_every_step_every_iterations():
    params = {"w": torch.nn.Parameter(torch.zeros(()))}
    cfg = OmegaConf.structured(OptimConfig(lr=0.001, schedule="step", step_every=3, gamma=0.5))
    optimizer, scheduler = build_optimizer(cfg, params, 100)
    rates = []
    for _ in range(7):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step(), scheduler.step()
    assert rates == pytest.approx([0.001] * 3 + [0.0005] * 3 + [0.00025])
