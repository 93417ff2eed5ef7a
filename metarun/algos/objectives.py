"""Task objectives: the loss an algorithm minimises and the metric evaluation reports."""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from metarun.data.tasks import PAD


@dataclass(frozen=True)
class Objective:
    """A loss over (predictions, targets) and the metric reported for it."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric_name: str
    higher_is_better: bool


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the examples that are not padding (label ``PAD``)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=PAD)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fraction of the examples that are not padding whose largest logit is their label's."""
    real = labels != PAD
    return ((logits.argmax(-1) == labels) & real).sum() / real.sum()


OBJECTIVES = {
    "regression": Objective(F.mse_loss, F.mse_loss, "mse", higher_is_better=False),
    "classification": Objective(_cross_entropy, _accuracy, "acc", higher_is_better=True),
}
