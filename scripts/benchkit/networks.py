"""The networks every implementation starts from, all with the same seeded weights: the peers' usual model code
(an ``nn.Sequential`` Conv-4 of ``nn.Conv2d`` and ``nn.BatchNorm2d``, or a ResNet-12 module as MetaOptNet's code
writes it) and metarun's own networks holding the peers' initial weights (``copy_into``, which also starts
metarun's other learned tensors from the plain loop's)."""

import torch
from torch import nn

from metarun.models import without_head
from metarun.models.conv4 import Conv4
from metarun.models.resnet12 import ResNet12


def peer_conv4(shape: tuple, out_features, width: int, max_pool: bool, running: bool = True) -> nn.Sequential:
    """The Conv-4 of the peers' examples: [Conv2d, BatchNorm2d, ReLU, 2x2 max-pool or MAML's stride-2 conv] x 4,
    then a linear head to ``out_features`` (none when None); ``running=False``: batch norm without running
    statistics (``track_running_stats=False``, as the iMAML peers' code has it: torch.func transforms refuse the
    in-place update of the running averages)."""
    layers, channels, size = [], shape[0], list(shape[1:])
    for _ in range(4):
        layers += [nn.Conv2d(channels, width, 3, stride=1 if max_pool else 2, padding=1),
                   nn.BatchNorm2d(width, track_running_stats=running), nn.ReLU(),
                   *([nn.MaxPool2d(2)] if max_pool else [])]
        channels, size = width, [s // 2 if max_pool else (s + 1) // 2 for s in size]
    head = [nn.Linear(width * size[0] * size[1], out_features)] if out_features else []
    return nn.Sequential(*layers, nn.Flatten(), *head)


class PeerBlock(nn.Module):
    """A ResNet-12 block as MetaOptNet's code writes it: three 3x3 conv-BN with leaky ReLUs, a 1x1 conv-BN
    shortcut, 2x2 max-pool."""

    def __init__(self, channels_in: int, channels_out: int):
        """A block from ``channels_in`` to ``channels_out`` channels."""
        super().__init__()
        width = channels_out
        self.conv1, self.bn1 = nn.Conv2d(channels_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.downsample = nn.Sequential(nn.Conv2d(channels_in, width, 1, bias=False), nn.BatchNorm2d(width))
        self.relu, self.pool = nn.LeakyReLU(0.1), nn.MaxPool2d(2)

    def forward(self, x):
        """The block's output for ``x`` [B, C, H, W]."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.pool(self.relu(self.bn3(self.conv3(out)) + self.downsample(x)))


def peer_model(setting: dict, device) -> nn.Module:
    """The peers' network for the setting, seeded: every implementation starts from the same weights."""
    torch.manual_seed(0)
    if "widths" in setting:
        channels = [setting["shape"][0], *setting["widths"]]
        blocks = [PeerBlock(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])]
        head = [nn.Linear(channels[-1], setting["outputs"])] if setting["outputs"] else []
        model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *head)
    else:
        model = peer_conv4(setting["shape"], setting["outputs"], setting["width"], setting["max_pool"],
                           setting["algo"] != "imaml")
    return model.to(device)


def embedding_dim(model: nn.Module, shape: tuple) -> int:
    """The size of a headless ``model``'s output for images of ``shape``: one forward in eval mode (batch norm's
    averages neither used for anything nor changed by it)."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        dim = model(torch.zeros(1, *shape, device=device)).shape[-1]
    model.train()
    return dim


def metarun_model(setting: dict, device) -> nn.Module:
    """metarun's own network for the setting (its batch norm), holding the peers' initial weights."""
    outputs = setting["outputs"] or setting["ways"]
    if "widths" in setting:
        model = ResNet12(setting["shape"], outputs, setting["widths"])
    else:
        model = Conv4(setting["shape"], outputs, setting["width"], max_pool=setting["max_pool"])
    model = model if setting["outputs"] else without_head(model)
    # both networks list their parameters in the same order (conv, batch norm, ..., head)
    copy_into(zip(model.parameters(), peer_model(setting, "cpu").parameters(), strict=True))
    return model.to(device)


def copy_into(pairs) -> None:
    """Copy each ``(mine, theirs)`` pair's values from ``theirs`` into ``mine``, which holds as many entries
    (Meta-SGD's learned rates are [1, *shape] in metarun, of the weight's shape in the plain loop).

    Raises:
        ValueError: a pair of different sizes: the two implementations list their tensors in different orders.
    """
    with torch.no_grad():
        for mine, theirs in pairs:
            if mine.numel() != theirs.numel():
                raise ValueError(f"tensor shapes differ between the implementations: {tuple(mine.shape)} and "
                                 f"{tuple(theirs.shape)}")
            mine.copy_(theirs.reshape(mine.shape))
