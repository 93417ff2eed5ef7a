"""Conv-4: the four-block CNN of Vinyals et al. (2016), used by MAML (Finn et al., 2017) and Prototypical
Networks (Snell et al., 2017): [3x3 conv (padding 1) → BatchNorm → ReLU → 2x2 max-pool] x 4, then a linear head.

``depth`` sets the number of blocks (Conv-N). As in Conv-6 of Chen et al. (2019, "A Closer Look at Few-shot
Classification"), only the first four blocks halve the image, so a deeper network keeps Conv-4's feature maps
(5x5 for 84-pixel images, 1x1 for 28-pixel ones) and head; depth 4, the default, is the papers' Conv-4, layer
for layer, so configs saved without ``depth`` build the network they trained.

Batch norm uses batch statistics (``norm="batch"``, as in the MAML code: a task's support and query sets
are normalised by their own statistics) or keeps running averages for evaluation (``norm="running"``); see
metarun/models/batchnorm.py. It runs under ``torch.func.functional_call`` and ``vmap`` exactly as in a
per-task loop. ``max_pool=False`` is MAML's Omniglot network: stride-2 convolutions instead of max-pooling,
about 4x cheaper on a CPU.
"""

from torch import nn

from metarun.models import max_pools
from metarun.models.batchnorm import BatchNorm2d, check_norm
from metarun.models.layout import Flatten
from metarun.models.second_order import Conv2d

HALVING_BLOCKS = 4  # Chen et al. (2019) pool in the first four blocks only, whatever the depth


class Conv4(nn.Sequential):
    """``depth`` conv-BN-ReLU blocks of ``width`` channels, the first four halving the image, and a linear head
    to ``out_features``."""

    def __init__(self, input_shape: tuple, out_features: int, width: int = 64, depth: int = 4, max_pool: bool = True,
                 norm: str = "batch"):
        """Build the network for images of ``input_shape`` (C, H, W); ``max_pool=False`` halves with stride-2 convs.

        Raises:
            ValueError: ``depth`` < 1, or images too small for the max-pools of the first ``depth`` blocks.
        """
        check_norm(norm)
        if depth < 1:
            raise ValueError(f"model.depth must be > 0, got {depth}; set e.g. model.depth=4")
        halvings = min(depth, HALVING_BLOCKS)
        height, breadth = (halved(size, halvings, max_pool) for size in input_shape[1:])
        if height == 0 or breadth == 0:
            raise ValueError(f"model.depth={depth} max-pools {input_shape[1]}x{input_shape[2]} images {halvings} "
                             f"times, to nothing; use model.depth<={max_pools(input_shape)} or "
                             f"dataset.image_size>={2 ** halvings}")
        layers = []
        for index in range(depth):
            layers += block(input_shape[0] if index == 0 else width, width, index < HALVING_BLOCKS, max_pool,
                            norm == "running")
        super().__init__(*layers, Flatten(), nn.Linear(width * height * breadth, out_features))


def block(channels_in: int, width: int, halves: bool, max_pool: bool, running: bool) -> list:
    """The layers of one 3x3 conv-BN-ReLU block; where it ``halves`` the image, with a 2x2 max-pool after it or,
    without ``max_pool``, a stride-2 convolution."""
    return [Conv2d(channels_in, width, kernel_size=3, stride=2 if halves and not max_pool else 1, padding=1),
            BatchNorm2d(width, running=running),
            nn.ReLU(inplace=True),  # over batch norm's output, which no backward keeps: one allocation fewer
            *([nn.MaxPool2d(2)] if halves and max_pool else [])]


def halved(size: int, halvings: int, max_pool: bool) -> int:
    """An image side of ``size`` pixels after ``halvings`` halvings."""
    for _ in range(halvings):
        # max-pooling floors odd sizes, a stride-2 conv with padding 1 rounds them up
        size = size // 2 if max_pool else (size + 1) // 2
    return size
