"""The higher peer: MAML's meta-step as higher's example writes it, a differentiable inner loop
(``innerloop_ctx``) per task."""

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.tasks import TaskBatch

from .impl import require


def maml(setting: dict, model: nn.Module, batch: TaskBatch):
    """higher's MAML as its example: ``innerloop_ctx(copy_initial_weights=False)`` per task, ``backward()`` per task."""
    higher = require("higher")
    inner = torch.optim.SGD(model.parameters(), lr=setting["inner_lr"])

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(setting["inner_steps"]):
                    diffopt.step(F.cross_entropy(fmodel(sx), sy))
                (F.cross_entropy(fmodel(qx), qy) / batch.num_tasks).backward()

    return backward, []
