"""How a per-task function is mapped over a meta-batch (``hardware.task_parallel``): one vmapped computation,
a per-task loop, or the loop's tasks spread over the CPU's cores in threads; ``auto`` takes the mapping
measurements have settled, or else races the mappings on a few of the run's own tasks at start-up and keeps the
fastest."""

import contextlib
import time
from typing import Optional

import torch
from torch.func import vmap

from metarun.config.algos import DifferentiableInnerLoopConfig
from metarun.data.tasks import TaskBatch
from metarun.logging.console import phase
from metarun.mapping.chunks import ONE_TASK_FIX
from metarun.mapping.task_threads import map_in_threads
from metarun.utils.errors import RunError
from metarun.utils.hardware import is_small

MAPPINGS = ("vmap", "loop", "threads")
TIMED_TASKS = 4  # tasks (or episodes) per timed step: each mapping's cost per task shows without a whole meta-batch
TIMED_ROUNDS = 3  # timed steps per mapping at most, after one untimed (its first-call costs)
CLEAR_LEAD = 1.5  # a mapping whose best step takes this many times the leader's is out of the race
# the race stops at the lesser of these: 10 s, or 5% of the job's expected time (a short job is not worth timing)
BUDGET_S, BUDGET_SHARE = 10.0, 0.05
VMAP_MARGIN = 0.9  # auto picks vmap only when its meta-step takes less than this fraction of the others' best


def use_task_parallel(parts, mapping: str) -> None:
    """Map ``parts``' tasks by ``mapping`` (one of ``MAPPINGS``) from now on, and give torch the intra-op threads
    that mapping needs: a process-wide setting, one thread per worker for threads, the run's count otherwise."""
    parts.task_parallel = mapping
    if parts.device.type == "cpu":
        torch.set_num_threads(1 if mapping == "threads" else parts.threads)


def race(step, mappings, job_tasks: float, synchronize=lambda: None, timer=time.perf_counter,
         adaptive: bool = True) -> tuple:
    """Time ``step(mapping, tasks)`` for each of ``mappings`` (the default first) and keep each mapping's fastest
    timed step.

    Every mapping gets one untimed step of one task (its first-call costs), then up to ``TIMED_ROUNDS`` timed steps
    of ``TIMED_TASKS``; a mapping ``CLEAR_LEAD`` times slower than the leader drops out, and the race ends once one
    mapping is left, or before a step would pass the budget: ``BUDGET_S`` or ``BUDGET_SHARE`` of the job's
    ``job_tasks`` tasks (their cost estimated from the first step), whichever is less. A race that cannot time
    every mapping once within it stops after its first step. ``adaptive=False`` runs every round of every mapping,
    whatever it costs.

    A mapping whose step runs out of memory is out of the race, with infinite seconds, said in one line; such a race
    is not complete (another run of the setting, with more memory free, races again).

    Returns:
        ``({mapping: seconds per timed step}, complete)``: the mappings timed (the first mapping's estimate when the
        budget allowed nothing more) and whether the race ran to its end, so that a cut race is not remembered for
        longer jobs.
    """
    seconds, started, budget, per_task = {}, timer(), BUDGET_S, None
    contenders = list(mappings)
    for rounds in range(TIMED_ROUNDS + 1):
        tasks = TIMED_TASKS if rounds else 1
        for mapping in list(contenders):
            if adaptive and per_task is not None and timer() - started + per_task * tasks > budget:
                timed = any(value != float("inf") for value in seconds.values())
                return seconds if timed else {**seconds, contenders[0]: per_task * TIMED_TASKS}, False
            elapsed = timed_step(step, mapping, tasks, synchronize, timer)
            if elapsed is None:
                seconds[mapping] = float("inf")
                contenders.remove(mapping)
                continue
            if per_task is None:
                per_task, budget = elapsed, min(BUDGET_S, BUDGET_SHARE * job_tasks * elapsed)
                # every mapping timed once, or none
                if adaptive and elapsed + per_task * (len(mappings) - 1 + len(mappings) * TIMED_TASKS) > budget:
                    return {**seconds, mapping: per_task * TIMED_TASKS}, False
            if rounds:
                per_task, seconds[mapping] = elapsed / tasks, min(seconds.get(mapping, elapsed), elapsed)
        leader = min(seconds.values(), default=None)
        if adaptive:
            contenders = [m for m in contenders if leader is None or seconds.get(m, 0) <= CLEAR_LEAD * leader]
        if rounds and len(contenders) <= 1:
            break
    return seconds, float("inf") not in seconds.values()


def timed_step(step, mapping: str, tasks: int, synchronize, timer) -> Optional[float]:
    """Seconds ``step(mapping, tasks)`` takes, its device work included; None when it runs out of memory."""
    synchronize()
    begun = timer()
    try:
        step(mapping, tasks)
        ran_out = False
    except torch.OutOfMemoryError:
        ran_out = True
    if ran_out:  # out of the except block, whose traceback held the failed step's tensors
        print(f"hardware.task_parallel=auto: {mapping} ran out of memory with {tasks} task{'s' * (tasks > 1)} at once; "
              "it is left out", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the failed step's blocks go back before the next mapping allocates
        return None
    synchronize()
    return timer() - begun


def fastest(seconds: dict) -> str:
    """The mapping ``auto`` keeps: the fastest, but vmap only when clearly faster than the best of the others."""
    others = {mapping: value for mapping, value in seconds.items() if mapping != "vmap"}
    if not others:
        return "vmap"
    best = min(others, key=others.get)
    return "vmap" if seconds.get("vmap", float("inf")) < VMAP_MARGIN * others[best] else best


def first_mapping(parts) -> str:
    """The mapping a race starts with and a cut race keeps: vmap on a GPU; on a CPU threads where the job has several
    cores (as fast as the loop or faster for convolutional networks, and unhurt by a busy machine's cores, which
    stall the loop's intra-op threads), else the loop."""
    if parts.device.type == "cuda" and "vmap" in parts.runs_in:
        return "vmap"
    return "threads" if "threads" in parts.auto_choices() else "loop"


def known_mapping(parts, job_tasks: int):
    """``(mapping, why)`` where ``task_parallel=auto``'s answer for ``parts`` and a job of ``job_tasks`` tasks (or
    episodes) is settled without timing, else None."""
    choices = parts.auto_choices()
    if len(choices) == 1:
        return choices[0], "the only mapping these settings run in"
    if job_tasks * BUDGET_SHARE < TIMED_TASKS:  # a step of the race would cost more than the budget allows
        return first_mapping(parts), f"{job_tasks} tasks are too few to be worth timing"
    if parts.device.type == "cuda" and "vmap" in choices and \
            issubclass(parts.algorithm.schema, DifferentiableInnerLoopConfig):
        return "vmap", "the MAML family on a GPU: one batched inner loop for the whole meta-batch"
    if parts.device.type == "cpu" and "threads" not in choices and "loop" in choices and not is_small(parts.model):
        # measured on Conv-4 and ResNet-12: vmap's batched convolutions take 1.4-2x the loop's time on one core
        return "loop", "a network of this size on one CPU thread"
    return None


def tune(parts, task_fn, params: dict, sample, job_tasks: int, group=None, timer=time.perf_counter,
         memory=None) -> dict:
    """Resolve ``task_parallel=auto`` for ``parts`` (``metarun.runner.components.Components``): switch ``parts`` to the
    mapping ``known_mapping`` gives, or else to the fastest in a short ``race`` of ``task_fn`` (forward, and backward
    into ``params`` unless gradients are disabled, as in evaluation) on ``sample(TIMED_TASKS)``.

    Random streams and gradients are left as they were, so the run is the one the chosen mapping gives. Timed
    in wall time by default: the threads mapping's point is to use more than one core. With a ``memory``
    (``metarun.mapping.remembered.RememberedChoice``) a single-process run reuses the timings of an earlier run of its
    setting, and so its choice, and remembers its own for the next (unless its budget cut the race short).

    Args:
        job_tasks: how many tasks (or episodes) the job will map, which bounds what timing may cost.

    Returns:
        ``{"seconds": {mapping: seconds per timed step}, "cost": seconds spent, "why": the reason it was not timed,
        "complete": whether the race ran to its end}`` (the seconds summed over the ranks of ``group``: all ranks
        pick alike); empty when the mapping was set.
    """
    if parts.task_parallel != "auto":
        return {}
    known = known_mapping(parts, job_tasks)
    if known is not None:
        use_task_parallel(parts, known[0])
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
    use_task_parallel(parts, fastest(seconds))
    return {"seconds": seconds, "cost": time.perf_counter() - started, "why": None, "complete": complete}


def _time_meta_step(parts, task_fn, params: dict, sample, job_tasks: int, group, timer) -> tuple:
    cuda = parts.device.type == "cuda"
    with torch.random.fork_rng(devices=[parts.device] if cuda else []):
        batch = sample(TIMED_TASKS)

        def step(mapping, tasks):
            use_task_parallel(parts, mapping)
            some = batch.tasks(0, tasks)
            if torch.is_grad_enabled():
                meta_backward(task_fn, params, some, mapping, lambda loss: loss, parts.autocast, parts.vmap_chunk)
            else:
                with parts.autocast():
                    map_tasks(task_fn, params, some, mapping)

        sync = (lambda: torch.cuda.synchronize(parts.device)) if cuda else (lambda: None)
        mappings = sorted(parts.auto_choices(), key=lambda mapping: mapping != first_mapping(parts))
        # a step of a large setting can take seconds on a CPU: say what the wait is for (train.run turns progress
        # off on every rank but the first); the race may end before the count does
        progress = phase(len(mappings) * (1 + TIMED_ROUNDS),
                         f"timing hardware.task_parallel=auto ({', '.join(mappings)})", unit="step")

        def counted(mapping, tasks):
            step(mapping, tasks)
            progress.update(progress.position + 1)

        # ranks time alike, whatever their clocks say, so that their timings sum mapping by mapping
        distributed = group is not None and group.world > 1
        try:
            seconds, complete = race(counted, mappings, job_tasks, sync, timer, adaptive=not distributed)
        finally:
            progress.close()
    for p in params.values():
        p.grad = None
    # in the mappings' order, alike on every rank whichever ran out of memory first
    timed = [mapping for mapping in mappings if mapping in seconds]
    totals = torch.tensor([seconds[mapping] for mapping in timed], device=parts.device)
    totals = group.sum(totals) if group is not None else totals
    if timed and all(total == float("inf") for total in totals.tolist()):  # after the sum: every rank stops here
        raise RunError(f"out of memory in every hardware.task_parallel mapping ({', '.join(timed)}) while timing "
                       f"them; {ONE_TASK_FIX}")
    return dict(zip(timed, totals.tolist())), complete


def map_tasks(task_fn, params, batch: TaskBatch, mapping: str):
    """Apply ``task_fn(params, sx, sy, qx, qy)`` to every task and stack each output over tasks.

    Args:
        mapping: "vmap" batches all tasks into one computation; "loop" runs them one after another; "threads"
            runs them on the CPU's cores at once (``metarun.mapping.task_threads``). The loop and threads run each task
            of a padded batch without its padding; vmap runs the padded tensors (``metarun.mapping.ragged``).
    """
    if mapping == "vmap":
        return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    run = lambda i: task_fn(params, *batch.task(i))  # noqa: E731
    outputs = map_in_threads(run, batch.num_tasks) if mapping == "threads" else \
        [run(i) for i in range(batch.num_tasks)]
    return tuple(torch.stack(parts) for parts in zip(*outputs)) if isinstance(outputs[0], tuple) else torch.stack(outputs)


def meta_backward(task_fn, params, batch: TaskBatch, mapping: str, scale, autocast=contextlib.nullcontext,
                  vmap_chunk: Optional[int] = None):
    """Backpropagate ``scale(loss)`` of every task's ``(loss, metric) = task_fn(params, sx, sy, qx, qy)`` into
    ``params``' gradients (accumulated, as the sum over tasks); return the detached losses and metrics [T].

    The loop backpropagates each task as soon as it is computed, as the peers' per-task loops do, so only one
    task's graph is alive at a time; threads do the same on every core and add the tasks' gradients in task
    order (the loop's sum, bit for bit); vmap backpropagates the summed batch once, or each ``vmap_chunk`` tasks'
    sum in turn (``hardware.vmap_chunk``: one chunk's graph alive at a time). ``autocast`` wraps the forwards.
    """
    if mapping == "vmap":
        chunk = vmap_chunk or batch.num_tasks
        outputs = []
        for first in range(0, batch.num_tasks, chunk):
            with autocast():
                losses, metrics = map_tasks(task_fn, params, batch.tasks(first, first + chunk), mapping)
            scale(losses.sum()).backward()
            outputs.append((losses.detach(), metrics.detach()))
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    if mapping == "threads":
        return _threads_backward(task_fn, params, batch, scale, autocast)
    outputs = []
    for index in range(batch.num_tasks):
        with autocast():
            loss, metric = task_fn(params, *batch.task(index))
        scale(loss).backward()  # not autograd.grad: checkpointed inner steps support backward only
        outputs.append((loss.detach(), metric.detach()))
    return tuple(torch.stack(parts) for parts in zip(*outputs))


def _threads_backward(task_fn, params, batch: TaskBatch, scale, autocast):
    """``meta_backward`` mapped in threads: each worker returns one task's gradients, summed here in task order."""
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
