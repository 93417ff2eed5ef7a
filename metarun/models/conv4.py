"""Conv-4: the four-block CNN of Vinyals et al. (2016), used by MAML (Finn et al., 2017) and Prototypical
Networks (Snell et al., 2017): [3x3 conv (padding 1) → BatchNorm → ReLU → 2x2 max-pool] x 4, then a linear head.

Batch norm uses batch statistics (``norm="batch"``, as in the MAML code: a task's support and query sets
are normalised by their own statistics) or keeps running averages for evaluation (``norm="running"``); see
metarun/models/batchnorm.py. It runs under ``torch.func.functional_call`` and ``vmap`` exactly as in a
per-task loop. ``max_pool=False`` is MAML's Omniglot network: stride-2 convolutions instead of max-pooling,
about 4x cheaper on a CPU.
"""

from torch import nn

from metarun.models.batchnorm import BatchNorm2d, check_norm


class Conv4(nn.Sequential):
    """Four conv-BN-ReLU-pool blocks of ``width`` channels and a linear head to ``out_features``."""

    def __init__(self, input_shape: tuple, out_features: int, width: int = 64, max_pool: bool = True,
                 norm: str = "batch"):
        """Build the network for images of ``input_shape`` (C, H, W); ``max_pool=False`` halves with stride-2 convs."""
        check_norm(norm)
        channels, height, breadth = input_shape
        layers = []
        for block in range(4):
            stride = 1 if max_pool else 2
            layers += [
                nn.Conv2d(channels if block == 0 else width, width, kernel_size=3, stride=stride, padding=1),
                BatchNorm2d(width, running=norm == "running"),
                nn.ReLU(),
                *([nn.MaxPool2d(2)] if max_pool else []),
            ]
            # max-pooling floors odd sizes, a stride-2 conv with padding 1 rounds them up
            height, breadth = (height // 2, breadth // 2) if max_pool else ((height + 1) // 2, (breadth + 1) // 2)
        if height == 0 or breadth == 0:
            raise ValueError(f"images of {input_shape[1]}x{input_shape[2]} are too small for Conv-4's four halvings; "
                             "use dataset.image_size >= 16")
        super().__init__(*layers, nn.Flatten(), nn.Linear(width * height * breadth, out_features))
