"""ResNet-12: the standard size, a head that ProtoNet can drop, vmap over tasks equal to the loop, and activations
in place."""

import warnings

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import vmap

from metarun.algos import maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models import without_head
from metarun.models.layout import lay_out_channels_last
from metarun.models.network import functional_forward
from metarun.models.resnet12 import ResNet12


def test_standard_resnet12_has_12_4m_parameters_and_a_640_d_embedding():
    model = ResNet12((3, 84, 84), 5)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(12.4e6, rel=0.01)
    x = torch.randn(2, 3, 84, 84)
    assert model(x).shape == (2, 5) and without_head(model)(x).shape == (2, 640)


def _small_maml_task():
    """A ResNet-12 of four small blocks, its second-order MAML task loss and a meta-batch of two 3-way tasks."""
    torch.manual_seed(0)
    model = ResNet12((3, 16, 16), 3, widths=[4, 4, 8, 8])
    forward = functional_forward(model)
    batch = TaskBatch(torch.randn(2, 6, 3, 16, 16), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
                      torch.randn(2, 6, 3, 16, 16), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2))
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=1))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    return model, task, batch


def _meta_gradients(model, task, batch, mapping: str) -> tuple:
    """The meta-gradient of the mean task loss over ``batch``."""
    params = dict(model.named_parameters())
    return torch.autograd.grad(map_tasks(task, params, batch, mapping)[0].mean(), list(params.values()))


def _kept_bytes(model, x) -> int:
    """The bytes of the distinct storages that autograd keeps for the backward of ``model(x)``."""
    kept = {}

    def keep(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(x)
    return sum(kept.values())


def test_second_order_meta_gradients_under_vmap_equal_the_loop():
    model, task, batch = _small_maml_task()
    grads = {mapping: _meta_gradients(model, task, batch, mapping) for mapping in ("vmap", "loop")}
    for a, b in zip(grads["vmap"], grads["loop"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])  # channels-last runs second_order.py's batch norm
def test_leaky_relus_in_place_keep_over_a_fifth_less_and_give_the_same_meta_gradients(channels_last):
    """In place, each leaky ReLU keeps only its output (its input, batch norm's output or the residual sum, is
    overwritten), where out of place autograd kept both."""
    model, task, batch = _small_maml_task()
    if channels_last:
        lay_out_channels_last(model)  # in place: the task's forward runs the same module
    activations = [module for module in model.modules() if isinstance(module, torch.nn.LeakyReLU)]
    assert len(activations) == 12 and all(module.inplace for module in activations)
    in_place = _meta_gradients(model, task, batch, "loop"), _kept_bytes(model, batch.support_x[0])
    for module in activations:
        module.inplace = False
    out_of_place = _meta_gradients(model, task, batch, "loop"), _kept_bytes(model, batch.support_x[0])
    for a, b in zip(in_place[0], out_of_place[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert in_place[1] < 0.8 * out_of_place[1]


def test_channels_last_under_vmap_takes_no_per_task_fallback_and_equals_the_loop():
    """The global average pool is a mean: torch's adaptive pool restrides a channels-last result with
    ``as_strided_``, which vmap runs task by task, warning of the performance drop."""
    torch.manual_seed(0)  # float64: the loop's fused batch norm and vmap's plain ops agree to its rounding
    model = lay_out_channels_last(ResNet12((3, 16, 16), 3, widths=[4, 4, 8, 8]).double())
    forward, params = functional_forward(model), dict(model.named_parameters())
    x = torch.randn(2, 6, 3, 16, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        batched = vmap(lambda images: forward(params, images))(x)
        batched_grads = torch.autograd.grad(batched.square().sum(), list(params.values()))
    looped = torch.stack([forward(params, images) for images in x])
    torch.testing.assert_close(batched, looped)
    for a, b in zip(batched_grads, torch.autograd.grad(looped.square().sum(), list(params.values()))):
        torch.testing.assert_close(a, b)
