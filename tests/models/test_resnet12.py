"""ResNet-12: the standard size, a head that ProtoNet can drop, and vmap over tasks equal to the loop."""

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models import without_head
from metarun.models.network import functional_forward
from metarun.models.resnet12 import ResNet12


def test_standard_resnet12_has_12_4m_parameters_and_a_640_d_embedding():
    model = ResNet12((3, 84, 84), 5)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(12.4e6, rel=0.01)
    x = torch.randn(2, 3, 84, 84)
    assert model(x).shape == (2, 5) and without_head(model)(x).shape == (2, 640)


def test_second_order_meta_gradients_under_vmap_equal_the_loop():
    torch.manual_seed(0)
    model = ResNet12((3, 16, 16), 3, widths=[4, 4, 8, 8])
    forward, params = functional_forward(model), dict(model.named_parameters())
    batch = TaskBatch(torch.randn(2, 6, 3, 16, 16), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
                      torch.randn(2, 6, 3, 16, 16), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2))
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=1))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    grads = {mapping: torch.autograd.grad(map_tasks(task, params, batch, mapping)[0].mean(), list(params.values()))
             for mapping in ("vmap", "loop")}
    for a, b in zip(grads["vmap"], grads["loop"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
