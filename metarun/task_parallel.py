"""How a per-task function is mapped over a meta-batch (``hardware.task_parallel``): one vmapped computation,
a per-task loop, or the loop's tasks spread over the CPU's cores in threads; ``auto`` takes the mode measurements
have settled, or else races the modes on a few of the run's own tasks at start-up and keeps the fastest."""

import contextlib
import time

import torch
from torch.func import vmap

from metarun.config import DifferentiableInnerLoopConfig
from metarun.data.tasks import TaskBatch
from metarun.hardware import is_small
from metarun.logging.console import phase
from metarun.task_threads import map_in_threads

MODES = ("vmap", "loop", "threads")
TIMED_TASKS = 4  # tasks (or episodes) per timed step: each mode's cost per task shows without a whole meta-batch
TIMED_ROUNDS = 3  # timed steps per mode at most, after one untimed (its first-call costs)
CLEAR_LEAD = 1.5  # a mode whose best step takes this many times the leader's is out of the race
# the race stops at the lesser of these: 10 s, or 5% of the job's expected time (a short job is not worth timing)
BUDGET_S, BUDGET_SHARE = 10.0, 0.05
VMAP_MARGIN = 0.9  # auto picks vmap only when its meta-step takes less than this fraction of the others' best


def race(step, modes, job_tasks: float, synchronize=lambda: None, timer=time.perf_counter,
         adaptive: bool = True) -> tuple:
    """Time ``step(mode, tasks)`` in each of ``modes`` (the default first) and keep each mode's fastest timed step.

    Every mode gets one untimed step of one task (its first-call costs), then up to ``TIMED_ROUNDS`` timed steps of
    ``TIMED_TASKS``; a mode ``CLEAR_LEAD`` times slower than the leader drops out, and the race ends once one mode
    is left, or before a step would pass the budget: ``BUDGET_S`` or ``BUDGET_SHARE`` of the job's ``job_tasks``
    tasks (their cost estimated from the first step), whichever is less. A race that cannot time every mode once
    within it stops after its first step. ``adaptive=False`` runs every round of every mode, whatever it costs.

    Returns:
        ``({mode: seconds per timed step}, complete)``: the modes timed (the first mode's estimate when the budget
        allowed nothing more) and whether the race ran to its end, so that a cut race is not remembered for longer
        jobs.
    """
    seconds, started, budget, per_task = {}, timer(), BUDGET_S, None
    contenders = list(modes)
    for rounds in range(TIMED_ROUNDS + 1):
        tasks = TIMED_TASKS if rounds else 1
        for mode in list(contenders):
            if adaptive and per_task is not None and timer() - started + per_task * tasks > budget:
                return seconds or {modes[0]: per_task * TIMED_TASKS}, False
            elapsed = timed_step(step, mode, tasks, synchronize, timer)
            if per_task is None:
                per_task, budget = elapsed, min(BUDGET_S, BUDGET_SHARE * job_tasks * elapsed)
                # every mode timed once, or none
                if adaptive and elapsed + per_task * (len(modes) - 1 + len(modes) * TIMED_TASKS) > budget:
                    return {mode: per_task * TIMED_TASKS}, False
            if rounds:
                per_task, seconds[mode] = elapsed / tasks, min(seconds.get(mode, elapsed), elapsed)
        leader = min(seconds.values(), default=None)
        if adaptive:
            contenders = [m for m in contenders if leader is None or seconds.get(m, 0) <= CLEAR_LEAD * leader]
        if rounds and len(contenders) == 1:
            break
    return seconds, True


def timed_step(step, mode: str, tasks: int, synchronize, timer) -> float:
    """Seconds ``step(mode, tasks)`` takes, its device work included."""
    synchronize()
    begun = timer()
    step(mode, tasks)
    synchronize()
    return timer() - begun


def fastest(seconds: dict) -> str:
    """The mode ``auto`` keeps: the fastest, but vmap only when clearly faster than the best of the others."""
    others = {mode: value for mode, value in seconds.items() if mode != "vmap"}
    if not others:
        return "vmap"
    best = min(others, key=others.get)
    return "vmap" if seconds.get("vmap", float("inf")) < VMAP_MARGIN * others[best] else best


def first_mode(parts) -> str:
    """The mode a race starts with and a cut race keeps: vmap on a GPU; on a CPU threads where the job has several
    cores (as fast as the loop or faster for convolutional networks, and unhurt by a busy machine's cores, which
    stall the loop's intra-op threads), else the loop."""
    if parts.device.type == "cuda" and "vmap" in parts.runs_in:
        return "vmap"
    return "threads" if "threads" in parts.auto_choices() else "loop"


def known_mode(parts, job_tasks: int):
    """``(mode, why)`` where ``task_parallel=auto``'s answer for ``parts`` and a job of ``job_tasks`` tasks (or
    episodes) is settled without timing, else None."""
    choices = parts.auto_choices()
    if len(choices) == 1:
        return choices[0], "the only mode these settings run in"
    if job_tasks * BUDGET_SHARE < TIMED_TASKS:  # a step of the race would cost more than the budget allows
        return first_mode(parts), f"{job_tasks} tasks are too few to be worth timing"
    if parts.device.type == "cuda" and "vmap" in choices and \
            issubclass(parts.algorithm.schema, DifferentiableInnerLoopConfig):
        return "vmap", "the MAML family on a GPU: one batched inner loop for the whole meta-batch"
    if parts.device.type == "cpu" and "threads" not in choices and "loop" in choices and not is_small(parts.model):
        # measured on Conv-4 and ResNet-12: vmap's batched convolutions take 1.4-2x the loop's time on one core
        return "loop", "a network of this size on one CPU thread"
    return None


def tune(parts, task_fn, params: dict, sample, job_tasks: int, group=None, timer=time.perf_counter,
         memory=None) -> dict:
    """Resolve ``task_parallel=auto`` for ``parts`` (``metarun.components.Components``): switch ``parts`` to the
    mode ``known_mode`` gives, or else to the fastest in a short ``race`` of ``task_fn`` (forward, and backward
    into ``params`` unless gradients are disabled, as in evaluation) on ``sample(TIMED_TASKS)``.

    Random streams and gradients are left as they were, so the run is the one the chosen mode gives. Timed
    in wall time by default: the threads mode's point is to use more than one core. With a ``memory``
    (``metarun.mode_memory.ModeMemory``) a single-process run reuses the timings of an earlier run of its
    setting, and so its choice, and remembers its own for the next (unless its budget cut the race short).

    Args:
        job_tasks: how many tasks (or episodes) the job will map, which bounds what timing may cost.

    Returns:
        ``{"seconds": {mode: seconds per timed step}, "cost": seconds spent, "why": the reason it was not timed,
        "complete": whether the race ran to its end}`` (the seconds summed over the ranks of ``group``: all ranks
        pick alike); empty when the mode was set.
    """
    if parts.task_parallel != "auto":
        return {}
    known = known_mode(parts, job_tasks)
    if known is not None:
        parts.use_task_parallel(known[0])
        return {"seconds": {}, "cost": 0.0, "why": known[1], "complete": True}
    started = time.perf_counter()
    complete = True
    if memory is None or (group is not None and group.world > 1):  # ranks must all time, to sum their timings
        seconds, complete = _time_meta_step(parts, task_fn, params, sample, job_tasks, group, timer)
    else:
        with memory.held():
            seconds = memory.recall()
            if seconds is None:
                seconds, complete = _time_meta_step(parts, task_fn, params, sample, job_tasks, group, timer)
                if complete:
                    memory.keep(seconds, fastest(seconds))
    # vmap holds every task's graph (and, in evaluation, every episode of a chunk) at once, several times the
    # others' memory: it has to be clearly faster to be worth that
    parts.use_task_parallel(fastest(seconds))
    return {"seconds": seconds, "cost": time.perf_counter() - started, "why": None, "complete": complete}


def _time_meta_step(parts, task_fn, params: dict, sample, job_tasks: int, group, timer) -> tuple:
    cuda = parts.device.type == "cuda"
    with torch.random.fork_rng(devices=[parts.device] if cuda else []):
        batch = sample(TIMED_TASKS)

        def step(mode, tasks):
            parts.use_task_parallel(mode)
            some = batch.tasks(0, tasks)
            if torch.is_grad_enabled():
                meta_backward(task_fn, params, some, mode, lambda loss: loss, parts.autocast)
            else:
                with parts.autocast():
                    map_tasks(task_fn, params, some, mode)

        sync = (lambda: torch.cuda.synchronize(parts.device)) if cuda else (lambda: None)
        modes = sorted(parts.auto_choices(), key=lambda mode: mode != first_mode(parts))
        # a step of a large setting can take seconds on a CPU: say what the wait is for (train.run turns progress
        # off on every rank but the first); the race may end before the count does
        progress = phase(len(modes) * (1 + TIMED_ROUNDS), f"timing hardware.task_parallel=auto ({', '.join(modes)})",
                         unit="step")

        def counted(mode, tasks):
            step(mode, tasks)
            progress.update(progress.position + 1)

        # ranks time alike, whatever their clocks say, so that their timings sum mode by mode
        distributed = group is not None and group.world > 1
        try:
            seconds, complete = race(counted, modes, job_tasks, sync, timer, adaptive=not distributed)
        finally:
            progress.close()
    for p in params.values():
        p.grad = None
    totals = torch.tensor(list(seconds.values()), device=parts.device)
    totals = group.sum(totals) if group is not None else totals
    return dict(zip(seconds, totals.tolist())), complete


def map_tasks(task_fn, params, batch: TaskBatch, mode: str):
    """Apply ``task_fn(params, sx, sy, qx, qy)`` to every task and stack each output over tasks.

    Args:
        mode: "vmap" batches all tasks into one computation; "loop" runs them one after another; "threads"
            runs them on the CPU's cores at once (``metarun.task_threads``). The loop and threads run each task
            of a padded batch without its padding; vmap runs the padded tensors (``metarun.ragged``).
    """
    if mode == "vmap":
        return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    run = lambda i: task_fn(params, *batch.task(i))  # noqa: E731
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
    for index in range(batch.num_tasks):
        with autocast():
            loss, metric = task_fn(params, *batch.task(index))
        scale(loss).backward()  # not autograd.grad: checkpointed inner steps support backward only
        outputs.append((loss.detach(), metric.detach()))
    return tuple(torch.stack(parts) for parts in zip(*outputs))


def _threads_backward(task_fn, params, batch: TaskBatch, scale, autocast):
    """``meta_backward`` in threads mode: each worker returns one task's gradients, summed here in task order."""
    leaves = list(params.values())

    def task_gradients(i):
        with autocast():
            loss, metric = task_fn(params, *batch.task(i))
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
