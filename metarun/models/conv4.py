"""Conv-4: the four-block CNN of Vinyals et al. (2016), used by MAML (Finn et al., 2017) and Prototypical
Networks (Snell et al., 2017): [3x3 conv (padding 1) → BatchNorm → ReLU → 2x2 max-pool] x 4, then a linear head.

BatchNorm always normalises with the statistics of the batch it sees and keeps no running averages
(``track_running_stats=False``), as in the MAML code (the transductive setting: a task's support and query sets are normalised by their own
statistics). Without buffers the model is a pure function of its parameters, so it runs under
``torch.func.functional_call`` and ``vmap`` exactly as in a per-task loop. ``max_pool=False`` is MAML's
Omniglot network: stride-2 convolutions instead of max-pooling, about 4x cheaper on a CPU.
"""

import torch
from torch import nn


class BatchNorm2d(nn.Module):
    """BatchNorm over (batch, height, width) with batch statistics only, written with plain tensor ops."""

    def __init__(self, channels: int, eps: float = 1e-5):
        """Per-channel scale (ones) and shift (zeros), as ``nn.BatchNorm2d``."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel of ``x`` [B, C, H, W] by its batch mean and (biased) variance."""
        # not F.batch_norm: under vmap its backward batching rule gives wrong second-order MAML gradients
        # (pytorch/functorch#534); these ops match the per-task loop
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Conv4(nn.Sequential):
    """Four conv-BN-ReLU-pool blocks of ``width`` channels and a linear head to ``out_features``."""

    def __init__(self, input_shape: tuple, out_features: int, width: int = 64, max_pool: bool = True):
        """Build the network for images of ``input_shape`` (C, H, W); ``max_pool=False`` halves with stride-2 convs."""
        channels, height, breadth = input_shape
        layers = []
        for block in range(4):
            stride = 1 if max_pool else 2
            layers += [
                nn.Conv2d(channels if block == 0 else width, width, kernel_size=3, stride=stride, padding=1),
                BatchNorm2d(width),
                nn.ReLU(),
                *([nn.MaxPool2d(2)] if max_pool else []),
            ]
            # max-pooling floors odd sizes, a stride-2 conv with padding 1 rounds them up
            height, breadth = (height // 2, breadth // 2) if max_pool else ((height + 1) // 2, (breadth + 1) // 2)
        if height == 0 or breadth == 0:
            raise ValueError(f"images of {input_shape[1]}x{input_shape[2]} are too small for Conv-4's four halvings; "
                             "use dataset.image_size >= 16")
        super().__init__(*layers, nn.Flatten(), nn.Linear(width * height * breadth, out_features))
