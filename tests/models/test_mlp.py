"""MLP: the paper's shape and flattened image inputs."""

import torch

from metarun.models import without_head
from metarun.models.mlp import MLP


def test_sinusoid_regressor_is_1_40_40_1():
    model = MLP((1,), 1, [40, 40])
    assert [tuple(p.shape) for p in model.parameters()] == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert model(torch.zeros(7, 5, 1)).shape == (7, 5, 1)


def test_image_inputs_are_flattened():
    model = MLP((1, 4, 4), 3, [8])
    assert model.state_dict()["0.weight"].shape == (8, 16)
    assert model(torch.zeros(2, 5, 1, 4, 4)).shape == (2, 5, 3)


def test_without_head_keeps_the_flattening_of_image_inputs_and_the_parameter_names():
    # ProtoNet with model=mlp on images embeds with the MLP's own forward (flatten, then the hidden layers)
    model = MLP((1, 8, 8), 5, [16, 12])
    headless = without_head(model)
    x = torch.randn(3, 1, 8, 8)
    assert type(headless) is MLP and headless(x).shape == (3, 12)
    assert [name for name, _ in headless.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    torch.testing.assert_close(headless(x), torch.nn.Sequential(*list(model.children())[:-1])(x.flatten(1)))
