"""Backbones. ``build_model`` instantiates ``model._target_`` with the dataset's input and output sizes."""

import torch
from hydra.utils import instantiate


def build_model(cfg, input_shape: tuple, output_dim: int) -> torch.nn.Module:
    """The backbone named by ``cfg._target_`` for inputs of ``input_shape`` and ``output_dim`` outputs."""
    return instantiate(cfg, input_shape=tuple(input_shape), out_features=output_dim)
