"""The convolution and batch norm with cheap second derivatives (metarun/models/second_order.py) and the
channels-last boundaries of a network (metarun/models/layout.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models import second_order
from metarun.models.conv4 import Conv4
from metarun.models.layout import Flatten, is_channels_last, lay_out_channels_last
from metarun.models.network import functional_forward

CHANNELS_LAST = torch.channels_last


def double(*shape, channels_last=False):
    torch.manual_seed(sum(shape))
    x = torch.randn(*shape, dtype=torch.float64)
    return (x.contiguous(memory_format=CHANNELS_LAST) if channels_last else x).requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride, bias", [(2, True), (1, False)])
def test_the_convolution_and_its_first_and_second_derivatives_are_torch_s(channels_last, stride, bias):
    x, weight = double(3, 4, 6, 6, channels_last=channels_last), double(5, 4, 3, 3, channels_last=channels_last)
    inputs = (x, weight, double(5)) if bias else (x, weight)
    conv = lambda x, w, b=None: second_order.conv2d(x, w, b, (stride, stride), (1, 1))  # noqa: E731
    torch.testing.assert_close(conv(*inputs), torch.nn.functional.conv2d(*inputs, stride=stride, padding=1))
    assert torch.autograd.gradcheck(conv, inputs)
    assert torch.autograd.gradgradcheck(conv, inputs)
    # images need no gradient: the second derivative is then taken without the input's
    assert torch.autograd.gradgradcheck(lambda *rest: conv(x.detach(), *rest), inputs[1:])


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_and_its_first_and_second_derivatives_are_torch_s(channels_last):
    x, weight, bias = double(4, 3, 5, 5, channels_last=channels_last) * 3 + 1, double(3), double(3)
    reference = torch.nn.functional.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5)
    torch.testing.assert_close(second_order.batch_norm(x, weight, bias, 1e-5), reference)
    norm = lambda x, w, b: second_order.batch_norm(x, w, b, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(norm, (x, weight, bias))
    assert torch.autograd.gradgradcheck(norm, (x, weight, bias))


def test_batch_norm_s_second_derivative_through_its_weight_gradient_alone_is_torch_s():
    # only the weight gradient is differentiated again, so the input gradient's incoming gradient is None
    x, weight, bias = double(4, 3, 5, 5, channels_last=True) * 3 + 1, double(3), double(3)
    dy, u = double(4, 3, 5, 5, channels_last=True), double(3).detach()

    def second_derivatives(norm):
        (dweight,) = torch.autograd.grad((norm(x, weight, bias) * dy).sum(), [weight], create_graph=True)
        return torch.autograd.grad((dweight * u).sum(), [x, dy])

    ours = second_derivatives(lambda *tensors: second_order.batch_norm(*tensors, 1e-5))
    reference = second_derivatives(lambda *tensors: F.batch_norm(tensors[0], None, None, *tensors[1:], True, 0.0, 1e-5))
    for found, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(found, expected)


def test_channels_last_statistics_are_summed_precisely():
    # torch's own channels-last kernel sums each channel in one naive pass: variance errors near 1e-5 relative
    x = (torch.randn(300, 64, 14, 14) * 3 + 5).relu().contiguous(memory_format=CHANNELS_LAST)
    exact = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    mean, variance = second_order._statistics(x)
    torch.testing.assert_close(variance.double(), exact[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(mean.double(), exact[1], rtol=1e-6, atol=0)


def meta_gradient(model, dtype, batch):
    """The meta-gradient of second-order MAML (5 inner steps) over ``batch`` on ``model``, in ``dtype``."""
    model = model.to(dtype)
    forward, params = functional_forward(model), {k: p.detach().clone().requires_grad_()
                                                   for k, p in model.named_parameters()}
    settings = OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=5))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, settings, OBJECTIVES["classification"])  # noqa: E731
    losses, _ = map_tasks(task, params, TaskBatch(*(t.to(dtype) if t.is_floating_point() else t
                                                   for t in batch.tensors())), "loop")
    return torch.autograd.grad(losses.sum(), list(params.values()))


@pytest.fixture
def one_thread():
    """One intra-op thread, as on pytest-xdist's workers and one core, where the comparison below was measured."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_channels_last_second_order_maml_takes_these_functions_and_keeps_the_meta_gradient(monkeypatch):
    torch.manual_seed(0)
    support, query = torch.arange(20).view(1, 20), torch.arange(20).repeat_interleave(10).view(1, 200)
    batch = TaskBatch(torch.randn(1, 20, 1, 28, 28), support, torch.randn(1, 200, 1, 28, 28), query)  # 20-way 1-shot
    network = Conv4((1, 28, 28), 20, width=64, max_pool=False)  # MAML's Omniglot network
    exact = meta_gradient(copy.deepcopy(network), torch.float64, batch)
    error = lambda gradient: max((ours.double() - reference).norm() / reference.norm()  # noqa: E731
                                 for ours, reference in zip(gradient, exact) if reference.norm() > 1e-6)
    calls = []
    for function in (second_order._ConvBackward, second_order._BatchNormBackward):
        apply = function.apply
        monkeypatch.setattr(function, "apply", lambda *a, apply=apply, name=function.__name__: (
            calls.append(name), apply(*a))[1])
    ours = error(meta_gradient(lay_out_channels_last(copy.deepcopy(network)), torch.float32, batch))
    assert {"_ConvBackward", "_BatchNormBackward"} <= set(calls)
    calls.clear()
    assert error(meta_gradient(copy.deepcopy(network), torch.float32, batch)) < 1e-4  # the default layout: torch's own
    assert not calls
    # torch's own channels-last kernels: on one thread, this task and initialisation put a ReLU's input within
    # rounding of zero and its mask flips (5.9e-3 from float64; over 16 random tasks 7 channels-last and 3 contiguous
    # meta-gradients left float64's by more than 1e-4); these functions must be no worse than those kernels
    monkeypatch.setattr(second_order, "applies", lambda laid_out: False)
    monkeypatch.setattr(second_order, "adapted", lambda x, weight: False)
    assert ours <= 1.5 * error(meta_gradient(lay_out_channels_last(copy.deepcopy(network)), torch.float32, batch)) \
        + 1e-5


@pytest.mark.parametrize("max_pool", [False, True])
def test_the_layout_runs_channels_last_from_a_first_layer_of_one_channel_to_the_head(max_pool):
    model = lay_out_channels_last(Conv4((1, 28, 28), 5, width=8, max_pool=max_pool))
    x = torch.randn(4, 1, 28, 28)
    # an inner step's weight of one input channel and the images are both layouts; with default strides the
    # convolution would return the default one
    fast = {"weight": torch.randn(8, 1, 3, 3), "bias": model[0].bias}
    assert not is_channels_last(torch.func.functional_call(torch.nn.Conv2d(1, 8, 3, padding=1), fast, (x,)))
    out = torch.func.functional_call(model[0], fast, (x,))
    assert is_channels_last(out)
    torch.testing.assert_close(out, F.conv2d(x, fast["weight"], fast["bias"], model[0].stride, 1))
    features = torch.randn(4, 8, 2, 2).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    flat = Flatten()(features)
    torch.testing.assert_close(flat, features.detach().flatten(1))  # the head sees the default (C, H, W) order
    (gradient,) = torch.autograd.grad((flat * torch.randn_like(flat)).sum(), features)
    assert is_channels_last(gradient)  # so the backward stays channels-last


def test_under_bf16_autocast_the_layers_keep_torch_s_mixed_precision_kernels():
    model = lay_out_channels_last(Conv4((1, 28, 28), 5, width=8, max_pool=False))
    params = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    labels = torch.arange(5)
    batch = TaskBatch(torch.randn(1, 5, 1, 28, 28), labels[None], torch.randn(1, 5, 1, 28, 28), labels[None])
    settings = OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=2))
    task = lambda p, *t: maml.meta_loss(functional_forward(model), p, *t, settings,  # noqa: E731
                                        OBJECTIVES["classification"])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # batch norm of bf16 activations with fp32 weights
        losses, _ = map_tasks(task, params, batch, "loop")
    gradients = torch.autograd.grad(losses.sum(), list(params.values()))
    assert all(torch.isfinite(g).all() for g in gradients)
