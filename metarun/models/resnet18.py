"""ResNet-18 as Meta-Dataset's code builds it (Triantafillou et al., 2020; ``resnet`` in the official
``meta_dataset/models/functional_backbones.py``, ``learner.py`` at the ICLR version): images resized bilinearly
(corners aligned) to the next 32k+1 pixels (DeepLab's alignment: 84 → 97, 126 → 129), a 7x7 stride-2 conv-BN-ReLU
stem with 64 channels and a 3x3 stride-2 max-pool, then four stages of two basic blocks [3x3 conv-BN-ReLU, 3x3
conv-BN, shortcut, ReLU] of 64-128-256-512 channels, global average pooling and a linear head.

As in the official code, and unlike torchvision's ResNet-18, each stage's first block has a 1x1 conv-BN projection
shortcut, the first stage's too (64 → 64 at stride 1); the stages after the first halve the image with their
first conv and its projection. Convolutions have no bias and start from the official truncated normal (σ 0.1).
On an odd side (the alignment makes every side odd) TensorFlow's SAME padding is symmetric, so the padding
here (half the kernel) gives the official feature maps: 129 → 65 → 33 → 17 → 9 → 5 pixels.

Each entry of ``widths`` is one stage; batch norm is metarun/models/batchnorm.py's (``norm``), as in ResNet-12.
It is an ``nn.Sequential`` whose last child is the head, as every metarun backbone.
"""

import math

import torch.nn.functional as F
from torch import nn

from metarun.models.batchnorm import BatchNorm2d, check_norm
from metarun.models.layout import GlobalAveragePool

STD = 0.1  # the official weight_variable: truncated normal of this σ, cut at 2σ


def aligned(size: int) -> int:
    """The side an image of ``size`` pixels is resized to: the next 32k+1 (DeepLab's feature alignment)."""
    return math.ceil(size / 32) * 32 + 1


class Align(nn.Module):
    """Bilinear resize (corners aligned, as ``tf.image.resize_bilinear(align_corners=True)``) to ``aligned`` sides."""

    def forward(self, x):
        """``x`` [B, C, H, W] at ``aligned(H)`` x ``aligned(W)``."""
        return F.interpolate(x, size=(aligned(x.shape[-2]), aligned(x.shape[-1])), mode="bilinear", align_corners=True)


def _conv_bn(channels_in: int, channels_out: int, kernel: int, stride: int, running: bool) -> list:
    conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.trunc_normal_(conv.weight, std=STD, a=-2 * STD, b=2 * STD)
    return [conv, BatchNorm2d(channels_out, running=running)]


class Block(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, an identity or 1x1 conv-BN shortcut, then ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, project: bool, running: bool = False):
        """A block from ``channels_in`` to ``channels_out`` channels whose first conv (and shortcut) has
        ``stride``; ``project``: a 1x1 conv-BN shortcut, else the identity."""
        super().__init__()
        # the ReLUs run in place over batch norm's output or the residual sum, which no backward keeps
        self.body = nn.Sequential(*_conv_bn(channels_in, channels_out, 3, stride, running), nn.ReLU(inplace=True),
                                  *_conv_bn(channels_out, channels_out, 3, 1, running))
        self.shortcut = nn.Sequential(*_conv_bn(channels_in, channels_out, 1, stride, running)) if project \
            else nn.Identity()

    def forward(self, x):
        """The block's output for ``x`` [B, C, H, W]."""
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class ResNet18(nn.Sequential):
    """Meta-Dataset's ResNet-18: a stage of two blocks per entry of ``widths``, global average pooling and a
    linear head."""

    def __init__(self, input_shape: tuple, out_features: int, widths: list = (64, 128, 256, 512),
                 norm: str = "batch"):
        """Build the network for images of ``input_shape`` (C, H, W); the stem has ``widths[0]`` channels.

        Raises:
            ValueError: ``widths`` empty or not all positive.
        """
        check_norm(norm)
        if not widths or min(widths) < 1:
            raise ValueError(f"model.widths must list a positive channel count per stage, got {list(widths)}; "
                             "set e.g. model.widths=[64,128,256,512]")
        running = norm == "running"
        layers = [Align(), *_conv_bn(input_shape[0], widths[0], 7, 2, running), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, padding=1)]
        channels = [widths[0], *widths]
        for stage, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layers += [Block(c_in, c_out, 1 if stage == 0 else 2, True, running),
                       Block(c_out, c_out, 1, False, running)]
        super().__init__(*layers, GlobalAveragePool(), nn.Flatten(), nn.Linear(widths[-1], out_features))
