"""How a per-task function is mapped over a meta-batch (``hardware.task_parallel``): one vmapped computation,
a per-task loop, or the loop's tasks spread over the CPU's cores in threads; ``auto`` times them on the run's
own meta-step at start-up and keeps the fastest."""

import contextlib
import time

import torch
from torch.func import vmap

from metarun.data.tasks import TaskBatch
from metarun.logging.console import phase
from metarun.task_threads import map_in_threads

MODES = ("vmap", "loop", "threads")
WARMUP, REPEATS = 1, 2  # untimed and timed meta-steps per mode when auto times them


VMAP_MARGIN = 0.9  # auto picks vmap only when its meta-step takes less than this fraction of the others' best


def time_modes(step, modes=MODES[:2], synchronize=lambda: None, timer=time.perf_counter, warmup: int = WARMUP,
               repeats: int = REPEATS) -> dict:
    """Seconds per ``step(mode)`` for each of ``modes``: ``warmup`` untimed calls, then the mean of ``repeats``."""
    seconds = {}
    for mode in modes:
        for _ in range(warmup):
            step(mode)
        synchronize()
        start = timer()
        for _ in range(repeats):
            step(mode)
        synchronize()
        seconds[mode] = (timer() - start) / repeats
    return seconds


def fastest(seconds: dict) -> str:
    """The mode ``auto`` keeps: the fastest, but vmap only when clearly faster than the best of the others."""
    others = {mode: value for mode, value in seconds.items() if mode != "vmap"}
    best = min(others, key=others.get)
    return "vmap" if seconds["vmap"] < VMAP_MARGIN * others[best] else best


def tune(parts, task_fn, params: dict, sample, group=None, timer=time.perf_counter, memory=None) -> dict:
    """Resolve ``task_parallel=auto`` for ``parts`` (``metarun.components.Components``): time the meta-step of
    ``task_fn`` (forward, and backward into ``params`` unless gradients are disabled, as in evaluation) on the
    meta-batch ``sample()`` in each of ``parts.auto_choices()`` and switch ``parts`` to the fastest.

    Random streams and gradients are left as they were, so the run is the one the chosen mode gives. Timed
    in wall time by default: the threads mode's point is to use more than one core. With a ``memory``
    (``metarun.mode_memory.ModeMemory``) a single-process run reuses the timings of an earlier run of its
    setting, and so its choice, and remembers its own for the next.

    Returns:
        the seconds per meta-step of each mode, summed over the ranks of ``group`` (all ranks pick alike);
        empty when the mode was set.
    """
    if parts.task_parallel != "auto":
        return {}
    if memory is None or (group is not None and group.world > 1):  # ranks must all time, to sum their timings
        seconds = _time_meta_step(parts, task_fn, params, sample, group, timer)
    else:
        with memory.held():
            seconds = memory.recall()
            if seconds is None:
                seconds = _time_meta_step(parts, task_fn, params, sample, group, timer)
                memory.keep(seconds, fastest(seconds))
    # vmap holds every task's graph (and, in evaluation, every episode of a chunk) at once, several times the
    # others' memory: it has to be clearly faster to be worth that
    parts.use_task_parallel(fastest(seconds))
    return seconds


def _time_meta_step(parts, task_fn, params: dict, sample, group, timer) -> dict:
    cuda = parts.device.type == "cuda"
    with torch.random.fork_rng(devices=[parts.device] if cuda else []):
        batch = sample()

        def step(mode):
            parts.use_task_parallel(mode)
            if torch.is_grad_enabled():
                meta_backward(task_fn, params, batch, mode, lambda loss: loss, parts.autocast)
            else:
                with parts.autocast():
                    map_tasks(task_fn, params, batch, mode)

        sync = (lambda: torch.cuda.synchronize(parts.device)) if cuda else (lambda: None)
        modes = parts.auto_choices()
        # a meta-step of a large setting can take a minute on a CPU: say what the wait is for (train.run turns
        # progress off on every rank but the first)
        progress = phase(len(modes) * (WARMUP + REPEATS), f"timing hardware.task_parallel=auto ({', '.join(modes)})",
                         unit="step")

        def counted(mode):
            step(mode)
            progress.update(progress.position + 1)

        try:
            seconds = time_modes(counted, modes, sync, timer)
        finally:
            progress.close()
    for p in params.values():
        p.grad = None
    totals = torch.tensor(list(seconds.values()), device=parts.device)
    totals = group.sum(totals) if group is not None else totals
    return dict(zip(seconds, totals.tolist()))


def map_tasks(task_fn, params, batch: TaskBatch, mode: str):
    """Apply ``task_fn(params, sx, sy, qx, qy)`` to every task and stack each output over tasks.

    Args:
        mode: "vmap" batches all tasks into one computation; "loop" runs them one after another; "threads"
            runs them on the CPU's cores at once (``metarun.task_threads``).
    """
    if mode == "vmap":
        return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    tasks = batch.tensors()
    run = lambda i: task_fn(params, *(t[i] for t in tasks))  # noqa: E731
    outputs = map_in_threads(run, batch.num_tasks) if mode == "threads" else [run(i) for i in range(batch.num_tasks)]
    return tuple(torch.stack(parts) for parts in zip(*outputs)) if isinstance(outputs[0], tuple) else torch.stack(outputs)


def meta_backward(task_fn, params, batch: TaskBatch, mode: str, scale, autocast=contextlib.nullcontext):
    """Backpropagate ``scale(loss)`` of every task's ``(loss, metric) = task_fn(params, sx, sy, qx, qy)`` into
    ``params``' gradients (accumulated, as the sum over tasks); return the detached losses and metrics [T].

    The loop backpropagates each task as soon as it is computed, as the peers' per-task loops do, so only one
    task's graph is alive at a time; threads do the same on every core and add the tasks' gradients in task
    order (the loop's sum, bit for bit); vmap backpropagates the summed batch once. ``autocast`` wraps the
    forwards.
    """
    if mode == "vmap":
        with autocast():
            losses, metrics = map_tasks(task_fn, params, batch, mode)
        scale(losses.sum()).backward()
        return losses.detach(), metrics.detach()
    if mode == "threads":
        return _threads_backward(task_fn, params, batch, scale, autocast)
    outputs = []
    for task in zip(*batch.tensors()):
        with autocast():
            loss, metric = task_fn(params, *task)
        scale(loss).backward()  # not autograd.grad: checkpointed inner steps support backward only
        outputs.append((loss.detach(), metric.detach()))
    return tuple(torch.stack(parts) for parts in zip(*outputs))


def _threads_backward(task_fn, params, batch: TaskBatch, scale, autocast):
    """``meta_backward`` in threads mode: each worker returns one task's gradients, summed here in task order."""
    tasks, leaves = batch.tensors(), list(params.values())

    def task_gradients(i):
        with autocast():
            loss, metric = task_fn(params, *(t[i] for t in tasks))
        return loss.detach(), metric.detach(), torch.autograd.grad(scale(loss), leaves, allow_unused=True)

    outputs = map_in_threads(task_gradients, batch.num_tasks)
    with torch.no_grad():
        for _, _, gradients in outputs:
            for leaf, gradient in zip(leaves, gradients):
                if gradient is None:
                    continue
                if leaf.grad is None:
                    leaf.grad = gradient
                else:
                    leaf.grad += gradient
    return tuple(torch.stack(parts) for parts in zip(*((loss, metric) for loss, metric, _ in outputs)))
