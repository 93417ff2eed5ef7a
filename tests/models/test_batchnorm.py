"""Batch norm's two kinds: batch statistics, and running averages recorded in training and used in eval mode."""

import pytest
import torch

from metarun.models.batchnorm import BatchNorm2d, evaluating, has_running_stats, recording
from metarun.models.conv4 import Conv4
from metarun.models.resnet12 import ResNet12


def _batch(seed=0):
    return torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def test_training_mode_normalises_with_batch_statistics_in_both_kinds():
    x = _batch()
    batch, running = BatchNorm2d(3), BatchNorm2d(3, running=True)
    torch.testing.assert_close(running(x), batch(x))
    torch.testing.assert_close(running.running_mean, torch.zeros(3))  # nothing recorded outside ``recording``
    out = batch(x)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_recording_moves_the_averages_by_momentum_towards_the_batch_statistics():
    layer, x = BatchNorm2d(3, running=True, momentum=0.1), _batch()
    with torch.no_grad(), recording(layer):
        layer(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(layer.running_mean, 0.1 * mean)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * var)
    assert not layer.recording


def test_eval_mode_uses_the_averages_so_each_image_is_scored_alone():
    layer = BatchNorm2d(3, running=True)
    with torch.no_grad(), recording(layer):
        layer(_batch(1))
    x = _batch(2)
    with evaluating(layer):
        whole = layer(x)
        torch.testing.assert_close(torch.cat([layer(x[i : i + 1]) for i in range(len(x))]), whole)
        expected = (x - layer.running_mean.view(1, -1, 1, 1)) / torch.sqrt(layer.running_var.view(1, -1, 1, 1) + 1e-5)
        torch.testing.assert_close(whole, expected)
    assert layer.training


@pytest.mark.parametrize("build", [lambda norm: Conv4((1, 28, 28), 5, width=8, norm=norm),
                                   lambda norm: ResNet12((3, 16, 16), 5, widths=[4, 4, 4, 4], norm=norm)])
def test_backbones_keep_averages_only_with_norm_running(build):
    assert not has_running_stats(build("batch")) and not list(build("batch").buffers())
    assert has_running_stats(build("running"))
    with pytest.raises(ValueError, match="model.norm=bacth is not one of batch, running"):
        build("bacth")


def _plain(x, weight, bias, eps=1e-5):
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_the_fused_kernel_outside_vmap_matches_the_plain_ops_to_second_order():
    torch.manual_seed(0)
    layer = BatchNorm2d(3).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(6, 3, 5, 5, dtype=torch.float64) * 2 + 1).requires_grad_()
    target = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    inputs = [x, layer.weight, layer.bias]
    results = []
    for out in (layer(x), _plain(x, layer.weight, layer.bias)):
        first = torch.autograd.grad((out * target).square().sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in first), inputs)  # as MAML's meta-gradient
        results.append([out, *first, *second])
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain)


def test_vmap_still_needs_the_plain_ops_for_second_order_gradients():
    # pytorch/functorch#534: F.batch_norm's batching rule gives a wrong second-order MAML gradient under vmap.
    # When a torch release fixes it, this fails: then under_vmap's fallback in batchnorm.py can go.
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 2, 1), torch.nn.BatchNorm2d(4, track_running_stats=False),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 4, 3)).double()
    params = {name: p.detach().requires_grad_() for name, p in net.named_parameters()}
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.randn(3, 6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 6, 1, 8, 8, generator=g,
                                                                                       dtype=torch.float64)
    y = torch.arange(3).repeat(2).expand(3, -1)

    def task(p, sx, sy, qx, qy):
        inner = grad(lambda p: torch.nn.functional.cross_entropy(functional_call(net, p, (sx,)), sy))(p)
        fast = {name: p[name] - 0.4 * inner[name] for name in p}
        return torch.nn.functional.cross_entropy(functional_call(net, fast, (qx,)), qy)

    batched = vmap(task, in_dims=(None, 0, 0, 0, 0))(params, sx, y, qx, y).sum()
    looped = sum(task(params, sx[i], y[i], qx[i], y[i]) for i in range(3))
    gaps = [(a - b).abs().max() for a, b in zip(torch.autograd.grad(batched, list(params.values())),
                                                torch.autograd.grad(looped, list(params.values())))]
    assert max(gaps) > 1e-6


def test_conv4_meta_gradients_agree_between_vmap_and_the_loop():
    from omegaconf import OmegaConf

    from metarun.algos import maml
    from metarun.algos.objectives import OBJECTIVES
    from metarun.config.algos import MAMLConfig
    from metarun.data.tasks import TaskBatch
    from metarun.mapping.task_parallel import map_tasks
    from metarun.models.network import functional_forward

    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=6).double()
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2, inner_lr=0.3))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat(2).expand(4, -1).contiguous()
    batch = TaskBatch(torch.randn(4, 6, 1, 16, 16, generator=g, dtype=torch.float64), labels,
                      torch.randn(4, 6, 1, 16, 16, generator=g, dtype=torch.float64), labels)
    grads = {mapping: torch.autograd.grad(map_tasks(task, params, batch, mapping)[0].sum(), list(params.values()))
             for mapping in ("vmap", "loop")}
    for a, b in zip(grads["vmap"], grads["loop"]):
        torch.testing.assert_close(a, b)
