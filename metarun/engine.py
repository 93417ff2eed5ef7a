"""How a per-task function is mapped over a meta-batch: one vmapped computation or a per-task loop."""

import torch
from torch.func import functional_call, vmap

from metarun.data.tasks import TaskBatch


def functional_forward(model: torch.nn.Module):
    """``forward(params, x)`` that runs ``model`` with the given parameters and its own buffers."""
    buffers = dict(model.named_buffers())
    return lambda params, x: functional_call(model, (params, buffers), (x,))


def map_tasks(task_fn, params, batch: TaskBatch, mode: str):
    """Apply ``task_fn(params, sx, sy, qx, qy)`` to every task and stack each output over tasks.

    Args:
        mode: "vmap" batches all tasks into one computation; "loop" runs them one after another.
    """
    if mode == "vmap":
        return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    outputs = [task_fn(params, *(t[i] for t in batch.tensors())) for i in range(batch.num_tasks)]
    return tuple(torch.stack(parts) for parts in zip(*outputs)) if isinstance(outputs[0], tuple) else torch.stack(outputs)
