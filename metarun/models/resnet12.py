"""ResNet-12: the residual backbone of TADAM (Oreshkin et al., 2018) and MetaOptNet (Lee et al., 2019), the
usual miniImageNet backbone since: four blocks of three [3x3 conv → BatchNorm → leaky ReLU (0.1)] with a
1x1-conv shortcut and a 2x2 max-pool, 64-160-320-640 channels, then global average pooling and a linear head.
Each entry of ``widths`` is one block (a stage): k widths make 3k convolutions, every block max-pooling as in the
papers; ``model.widths=[64,160]`` is a two-block ResNet-6.

Batch norm is metarun/models/batchnorm.py's, as in Conv-4: batch statistics (the transductive setting) or
running averages for evaluation (``norm="running"``); it runs under ``functional_call`` and ``vmap``. It is an
``nn.Sequential`` whose last child is the head, as every metarun backbone, so algorithms without a head (ProtoNet)
drop it. DropBlock (used by MetaOptNet) is left out.
"""

from torch import nn

from metarun.models import max_pools
from metarun.models.batchnorm import BatchNorm2d, check_norm
from metarun.models.layout import GlobalAveragePool


def _conv_bn(channels_in: int, channels_out: int, kernel: int, running: bool) -> list:
    return [nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2, bias=False),
            BatchNorm2d(channels_out, running=running)]


class Block(nn.Module):
    """Three conv-BN layers with leaky ReLUs, a 1x1 conv-BN shortcut, then 2x2 max-pool."""

    def __init__(self, channels_in: int, channels_out: int, running: bool = False):
        """A block from ``channels_in`` to ``channels_out`` channels (``running``: batch norm keeps averages)."""
        super().__init__()
        # the activations run in place over batch norm's output or the residual sum, which no backward keeps
        self.body = nn.Sequential(*_conv_bn(channels_in, channels_out, 3, running), nn.LeakyReLU(0.1, inplace=True),
                                  *_conv_bn(channels_out, channels_out, 3, running), nn.LeakyReLU(0.1, inplace=True),
                                  *_conv_bn(channels_out, channels_out, 3, running))
        self.shortcut = nn.Sequential(*_conv_bn(channels_in, channels_out, 1, running))
        self.out = nn.Sequential(nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2))

    def forward(self, x):
        """The block's output for ``x`` [B, C, H, W]."""
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Sequential):
    """A residual block per entry of ``widths`` (its channels), global average pooling and a linear head."""

    def __init__(self, input_shape: tuple, out_features: int, widths: list = (64, 160, 320, 640), norm: str = "batch"):
        """Build the network for images of ``input_shape`` (C, H, W).

        Raises:
            ValueError: ``widths`` empty or not all positive, or more blocks than the image size has max-pools for.
        """
        check_norm(norm)
        if not widths or min(widths) < 1:
            raise ValueError(f"model.widths must list a positive channel count per block, got {list(widths)}; "
                             "set e.g. model.widths=[64,160,320,640]")
        largest = max_pools(input_shape)
        if len(widths) > largest:
            raise ValueError(f"model.widths lists {len(widths)} blocks, each max-pooling, but {input_shape[1]}x"
                             f"{input_shape[2]} images allow {largest}; list at most {largest} widths or use "
                             f"dataset.image_size>={2 ** len(widths)}")
        channels = [input_shape[0], *widths]
        blocks = [Block(c_in, c_out, norm == "running") for c_in, c_out in zip(channels, channels[1:])]
        super().__init__(*blocks, GlobalAveragePool(), nn.Flatten(), nn.Linear(widths[-1], out_features))
