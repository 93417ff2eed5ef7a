"""MLP: the paper's shape and flattened image inputs."""

import torch

from metarun.models.mlp import MLP


def test_sinusoid_regressor_is_1_40_40_1():
    model = MLP((1,), 1, [40, 40])
    assert [tuple(p.shape) for p in model.parameters()] == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert model(torch.zeros(7, 5, 1)).shape == (7, 5, 1)


def test_image_inputs_are_flattened():
    model = MLP((1, 4, 4), 3, [8])
    assert model.state_dict()["0.weight"].shape == (8, 16)
    assert model(torch.zeros(2, 5, 1, 4, 4)).shape == (2, 5, 3)
