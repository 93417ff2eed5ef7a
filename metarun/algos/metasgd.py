"""Meta-SGD: Li, Zhou, Chen & Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835.

Protocol: MAML's single inner step, but with a learned learning rate for every parameter entry,
``meta/lr/<name>`` of the parameter's shape, initialised at ``inner_lr`` and meta-learned with the
initialisation by the same second-order meta-gradient (the learned "learning strategy": direction and step
size). Meta-test takes ``test_inner_steps`` steps with the learned rates. The inner loop, meta-loss and
evaluation are MAML's (``metarun.algos.maml``) over the extended parameter dict.
"""

import torch

from metarun.algos.base import Algorithm
from metarun.algos.inner_loop import Params
from metarun.algos.maml import LR, META, check, evaluate_task, meta_loss, predict, runs_in
from metarun.config.algos import MetaSGDConfig

__all__ = ["meta_params", "meta_loss", "evaluate_task", "predict", "ALGORITHM"]


def meta_params(model: torch.nn.Module, settings) -> Params:
    """The model's parameters and one learned inner learning rate per parameter entry (shape [1, *param])."""
    params = dict(model.named_parameters())
    params.update({f"{LR}{name}": torch.nn.Parameter(torch.full((1, *p.shape), settings.inner_lr, device=p.device))
                   for name, p in params.items() if not name.startswith(META)})
    return params


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, MetaSGDConfig, meta_params=meta_params, check=check,
                      runs_in=runs_in, pads=True)
