"""MLP with ReLU: the MAML paper's 1-40-40-1 sinusoid regressor (Finn et al., 2017, section 5.1)."""

import math

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear-ReLU layers of the given hidden widths, then a linear output; inputs are flattened."""

    def __init__(self, input_shape: tuple, out_features: int, hidden: list):
        """Build layers for inputs of ``input_shape``."""
        widths = [math.prod(input_shape), *hidden]
        layers = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        super().__init__(*layers, nn.Linear(widths[-1], out_features))
        self.input_dims = len(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map [..., *input_shape] to [..., out_features]."""
        return super().forward(x.flatten(start_dim=x.dim() - self.input_dims))
