"""Meta-LSTM: one update against torch's LSTMCell and SGD, the meta-gradient under the gradient independence
assumption against finite differences, vmap and threads against the loop, load_learner and the one-line errors."""

import math

import pytest
import torch

from metarun import load_learner
from metarun.algos import inner_loop, metalstm
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MetaLSTMConfig
from metarun.models.network import functional_forward
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import assert_mapped_equals_loop, few_shot_accuracy
from tests.synthetic import TinyCNN, image_config

CE = OBJECTIVES["classification"]


def tiny_problem(cfg, scale=0.0, seed=0):
    """A float64 MLP learner (2 -> 3 -> 3) with its meta-learner, and one 3-way task of 6 support and 6 query points.

    ``scale``: the meta-learner's weights (not the gate biases) drawn from N(0, scale^2) instead of U(-0.01, 0.01),
    so that every path through the updates matters.
    """
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3)).double()
    params = metalstm.meta_params(model, cfg)
    if scale:
        drawn = [name for name in params if name.startswith(metalstm.META) and name != f"{metalstm.CELL}bias"]
        params.update({name: scale * torch.randn_like(params[name]) for name in drawn})
    params = {name: t.detach().clone().requires_grad_() for name, t in params.items()}
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    task = (torch.randn(6, 2, dtype=torch.float64), labels, torch.randn(6, 2, dtype=torch.float64), labels)
    return functional_forward(model), params, task


def split(params):
    """(meta-learner tensors, learner parameters) of a parameter dict."""
    meta = {name: t for name, t in params.items() if name.startswith(metalstm.META)}
    return meta, {name: t for name, t in params.items() if name not in meta}


def support_loss_and_gradient(forward, theta, x, y):
    """The support loss and flat gradient at ``theta``, by plain autograd."""
    theta = {name: t.detach().requires_grad_() for name, t in theta.items()}
    loss = CE.loss(forward(theta, x), y)
    return loss.detach(), torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(theta.values()))])


def test_preprocessing_is_log_magnitude_and_sign_or_scaled_value():
    x = torch.tensor([1.0, -math.exp(-5.0), 1e-6, 0.0], dtype=torch.float64)
    expected = torch.tensor([[0.0, 1.0], [-0.5, -1.0], [-1.0, math.exp(10.0) * 1e-6], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(metalstm.preprocess(x), expected)


def test_two_updates_are_a_hand_computation_with_torch_lstm_cell():
    cfg = MetaLSTMConfig(hidden_size=4)
    forward, params, (sx, sy, _, _) = tiny_problem(cfg, scale=0.5)
    meta, theta = split(params)
    cell = torch.nn.LSTMCell(4, 4).double()
    with torch.no_grad():
        cell.weight_ih.copy_(meta["meta/lstm/weight_ih"]), cell.weight_hh.copy_(meta["meta/lstm/weight_hh"])
        cell.bias_ih.copy_(meta["meta/lstm/bias"]), cell.bias_hh.zero_()
    weight, bias = meta["meta/cell/weight"].detach(), meta["meta/cell/bias"].detach()
    path = metalstm.adapt(forward, params, sx, sy, 2, CE.loss)
    flat, state, previous = torch.cat([t.detach().reshape(-1) for t in theta.values()]), None, (0.0, 0.0)
    for stepped in path[1:]:
        pieces = flat.split([t.numel() for t in theta.values()])
        loss, grad = support_loss_and_gradient(forward, {n: p.view_as(theta[n]) for n, p in zip(theta, pieces)}, sx, sy)
        inputs = torch.cat([metalstm.preprocess(loss).expand(len(grad), 2), metalstm.preprocess(grad)], 1)
        state = cell(inputs, state)
        h = state[0].detach()
        # eq. 2-3 with h for the loss and gradient, and each gate's previous pre-activation (zero at first)
        forget = h @ weight[0, :4] + flat * weight[0, 4] + previous[0] * weight[0, 5] + bias[0]
        rate = h @ weight[1, :4] + flat * weight[1, 4] + previous[1] * weight[1, 5] + bias[1]
        flat, previous = torch.sigmoid(forget) * flat - torch.sigmoid(rate) * grad, (forget, rate)
        torch.testing.assert_close(torch.cat([t.detach().reshape(-1) for t in stepped.values()]), flat)


def test_with_the_forget_gate_at_one_the_updates_are_sgd_at_inner_lr():
    # the gate biases as meta_params sets them, the forget gate saturated (sigmoid(40) is 1 in float64) and the
    # gates' weights zero: i = inner_lr and f = 1 at every update, whatever the LSTM's state
    cfg = MetaLSTMConfig(inner_lr=0.3, forget_bias=40.0)
    forward, params, (sx, sy, _, _) = tiny_problem(cfg)
    assert torch.sigmoid(params["meta/cell/bias"][1]).item() == pytest.approx(0.3)
    params["meta/cell/weight"] = torch.zeros_like(params["meta/cell/weight"])
    _, theta = split(params)
    sgd = inner_loop.trajectory(lambda step: forward, theta, sx, sy, lambda step: 0.3, 2, CE.loss, first_order=True)
    for ours, reference in zip(metalstm.adapt(forward, params, sx, sy, 2, CE.loss), sgd):
        for name in theta:
            torch.testing.assert_close(ours[name], reference[name])
    assert not torch.allclose(sgd[2]["0.weight"], theta["0.weight"])


def test_meta_gradient_matches_finite_differences_with_the_support_gradients_held_fixed():
    cfg = MetaLSTMConfig(inner_lr=0.3, forget_bias=2.0, hidden_size=3, inner_steps=2)
    forward, params, (sx, sy, qx, qy) = tiny_problem(cfg, scale=0.5)
    loss, _ = metalstm.meta_loss(forward, params, sx, sy, qx, qy, cfg, CE)
    analytic = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    # the gradient independence assumption: the loss and gradient fed at each update are those of the unperturbed
    # trajectory, constants of the meta-parameters
    path = metalstm.adapt(forward, params, sx, sy, 2, CE.loss)
    observed = [support_loss_and_gradient(forward, theta, sx, sy) for theta in path[:2]]

    def held_fixed(values):
        meta, theta = split(values)
        replay = iter(observed)
        adapted = metalstm.trajectory(meta, theta, 2, lambda current: next(replay))[-1]
        return CE.loss(forward(adapted, qx), qy)

    def real(values):
        return metalstm.meta_loss(forward, values, sx, sy, qx, qy, cfg, CE)[0]

    def finite_differences(fn, name, eps=1e-6):
        base = {n: t.detach() for n, t in params.items()}
        grad = torch.zeros_like(base[name]).reshape(-1)
        for i in range(grad.numel()):
            step = torch.zeros_like(grad)
            step[i] = eps
            plus = fn({**base, name: base[name] + step.view_as(base[name])})
            minus = fn({**base, name: base[name] - step.view_as(base[name])})
            grad[i] = (plus - minus) / (2 * eps)
        return grad.view_as(base[name])

    for name in params:
        assert analytic[name].abs().sum() > 0, name
        torch.testing.assert_close(analytic[name], finite_differences(held_fixed, name), rtol=1e-6, atol=1e-8,
                                   msg=name)
    # the full derivative, with the gradients' own dependence on theta_0, is another: they are detached indeed
    assert not torch.allclose(analytic["0.weight"], finite_differences(real, "0.weight"), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mapping", ["vmap", "threads"])
def test_mapped_tasks_equal_the_loop(mapping):
    cfg = MetaLSTMConfig(inner_lr=0.1, inner_steps=2, test_inner_steps=3, hidden_size=5)
    looped = assert_mapped_equals_loop(metalstm.ALGORITHM, cfg, TinyCNN((1, 12, 12), 3, width=4), mapping)
    assert looped["curve"].shape == (3, 4)


def test_load_learner_adapts_and_predicts(tmp_path):
    # a loop over tasks: no start-up timing of the task mappings
    run(image_config(["algo=metalstm", "algo.inner_lr=0.1", "train.iterations=10", "eval.episodes=10",
                      "hardware.task_parallel=loop"], output_dir=tmp_path, noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    assert few_shot_accuracy(learner, (60, 61, 62, 63, 64)) > 0.6  # chance is 0.2


def test_an_initial_learning_rate_the_input_gate_cannot_take_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^algo.inner_lr=1.5 is metalstm's initial input gate, a sigmoid below 1; "
                                         r"set e.g. algo.inner_lr=0.01$"):
        build_components(image_config(["algo=metalstm", "algo.inner_lr=1.5"]))


def test_a_hidden_size_of_zero_is_refused_in_one_line():
    with pytest.raises(ValueError, match="^algo.hidden_size must be > 0, got 0; set e.g. algo.hidden_size=1$"):
        build_components(image_config(["algo=metalstm", "algo.hidden_size=0"]))
