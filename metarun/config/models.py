"""The settings schema of every built-in network (``model.*``), each typing its ``conf/model`` YAML."""

from dataclasses import Field, dataclass
from typing import List

from omegaconf import MISSING

from metarun.config.fields import choice, positive, schema, setting

NORMS = ("batch", "running")  # model.norm: see metarun/models/batchnorm.py


def batch_norm() -> Field:
    """``model.norm``, the same field on every backbone with batch norm."""
    return choice(*NORMS, help="batch: batch statistics (transductive) | running: averages used at evaluation "
                               "(metarun/models/batchnorm.py)")


@dataclass
class ModelConfig:
    """What every network's settings have: where its code is."""

    _target_: str = setting(MISSING, help="the network's import path; your own: my_module.MyNetwork (an nn.Module "
                                          "taking input_shape and out_features)")


@schema("model", "mlp")
@dataclass
class MLPConfig(ModelConfig):
    """Fully connected ReLU network."""

    _target_: str = "metarun.models.mlp.MLP"
    hidden: List[int] = setting([40, 40], help="widths of the hidden layers")


@schema("model", "resnet12")
@dataclass
class ResNet12Config(ModelConfig):
    """ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): residual blocks of 64-160-320-640 channels by default."""

    _target_: str = "metarun.models.resnet12.ResNet12"
    widths: List[int] = setting(
        [64, 160, 320, 640], help="channels of each residual block, one entry per block (3 convolutions and a "
                                  "max-pool each): [32,64] is a two-block ResNet-6; entries must be > 0 (the model "
                                  "checks them when it is built, at start-up)")
    norm: str = batch_norm()


@schema("model", "resnet18")
@dataclass
class ResNet18Config(ModelConfig):
    """ResNet-18 as Meta-Dataset's code builds it (Triantafillou et al., 2020): 64-128-256-512 channels by default."""

    _target_: str = "metarun.models.resnet18.ResNet18"
    widths: List[int] = setting(
        [64, 128, 256, 512], help="channels of each stage of two basic blocks, one entry per stage (the first is also "
                                  "the stem's); entries must be > 0 (the model checks them when it is built, at "
                                  "start-up)")
    norm: str = batch_norm()


@schema("model", "conv4")
@dataclass
class Conv4Config(ModelConfig):
    """Conv-4 backbone (Vinyals et al., 2016; Finn et al., 2017), or Conv-N with ``depth``."""

    _target_: str = "metarun.models.conv4.Conv4"
    width: int = positive(64, help="channels of every convolution")
    depth: int = positive(4, help="conv blocks (Conv-N); only the first 4 halve the image, as in Chen et al. (2019)'s "
                                  "Conv-6, so the head's input size stays Conv-4's; 4 is the papers' Conv-4")
    max_pool: bool = setting(True, help="false: stride-2 convolutions, MAML's Omniglot network")
    norm: str = batch_norm()
