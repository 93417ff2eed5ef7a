"""MLP with ReLU: the MAML paper's 1-40-40-1 sinusoid regressor (Finn et al., 2017, section 5.1)."""

from torch import nn


class MLP(nn.Sequential):
    """Linear-ReLU layers of the given hidden widths, then a linear output."""

    def __init__(self, input_shape: tuple, out_features: int, hidden: list):
        """Build layers for flat inputs of size ``input_shape[-1]``."""
        widths = [input_shape[-1], *hidden]
        layers = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        super().__init__(*layers, nn.Linear(widths[-1], out_features))
