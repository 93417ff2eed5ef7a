"""ResNet-18 (Meta-Dataset's): its size counted by hand, its feature maps at 84 and 126 pixels, a head that ProtoNet
can drop, and vmap over tasks equal to the loop."""

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models import build_model, without_head
from metarun.models.network import functional_forward
from metarun.models.resnet18 import ResNet18
from tests.conftest import compose_config


def conv_bn(c_in: int, c_out: int, kernel: int) -> int:
    """Parameters of a bias-free conv and its batch norm (scale and shift)."""
    return kernel * kernel * c_in * c_out + 2 * c_out


def resnet18_parameters(out_features: int, first_stage_projection: bool) -> int:
    """ResNet-18's parameters counted layer by layer: a 7x7 stem, two basic blocks per stage of 64-128-256-512
    channels, a 1x1 projection where a stage starts (in the first stage only with ``first_stage_projection``),
    a linear head."""
    count, c_in = conv_bn(3, 64, 7), 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for block in range(2):
            count += conv_bn(c_in, width, 3) + conv_bn(width, width, 3)
            if block == 0 and (stage > 0 or first_stage_projection):
                count += conv_bn(c_in, width, 1)
            c_in = width
    return count + 512 * out_features + out_features


def test_the_count_by_hand_is_torchvisions_resnet18():
    assert resnet18_parameters(1000, first_stage_projection=False) == 11_689_512  # torchvision's resnet18()


@pytest.fixture(scope="module")
def resnet18():
    """The default ResNet-18 with a 5-way head, built once (it resizes any image size itself)."""
    return build_model(compose_config(["model=resnet18"]).model, (3, 84, 84), 5)


def test_it_has_torchvisions_layout_plus_the_official_first_stage_projection(resnet18):
    assert sum(p.numel() for p in resnet18.parameters()) == resnet18_parameters(5, first_stage_projection=True)
    assert resnet18_parameters(5, True) - resnet18_parameters(5, False) == 64 * 64 + 2 * 64


@pytest.mark.parametrize("size, side", [(84, 4), (126, 5)])  # aligned to 97 and 129 pixels, then / 32 (ceil)
def test_feature_maps_embedding_and_logits_at_the_papers_image_sizes(resnet18, size, side):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.nn.Sequential(*list(resnet18)[:-3])(x).shape == (2, 512, side, side)  # before pool and head
        assert without_head(resnet18)(x).shape == (2, 512) and resnet18(x).shape == (2, 5)


def test_empty_or_non_positive_widths_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"^model.widths must list a positive channel count per stage, got \[\]"):
        ResNet18((3, 84, 84), 5, widths=[])


@pytest.mark.parametrize("first_order", [True, False])
def test_maml_meta_gradients_under_vmap_equal_the_loop(first_order):
    torch.manual_seed(0)
    # float64: the loop and vmap sum in different orders, which float32 shows at 1e-5 through second order
    model = ResNet18((3, 16, 16), 3, widths=[4, 4, 8, 8]).double()
    forward, params = functional_forward(model), dict(model.named_parameters())
    batch = TaskBatch(torch.randn(2, 6, 3, 16, 16, dtype=torch.float64), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
                      torch.randn(2, 6, 3, 16, 16, dtype=torch.float64), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2))
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.1, inner_steps=1, first_order=first_order))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    results = {}
    for mapping in ("vmap", "loop"):
        losses, _ = map_tasks(task, params, batch, mapping)
        results[mapping] = (losses, torch.autograd.grad(losses.mean(), list(params.values())))
    torch.testing.assert_close(results["vmap"][0], results["loop"][0])
    for a, b in zip(results["vmap"][1], results["loop"][1]):
        torch.testing.assert_close(a, b)
