"""``hardware.vmap_chunk=auto``: vmap's chunk of tasks fitted to the GPU's memory. A meta-step starts with the whole
meta-batch at once; when it runs out of memory, the chunk halves and the same meta-batch is tried again, and the
chunk that fits is kept for the rest of the run. Any other setting reports running out of memory in one line that
names the fix."""

from typing import Callable, Optional

import torch

from metarun.utils.errors import RunError

# the fix when a single task does not fit
ONE_TASK_FIX = ("lower the memory one task takes (algo.checkpoint_inner=true for the MAML family, fewer "
                "algo.inner_steps or dataset.queries, a smaller model)")


def starting_chunk(setting) -> Optional[int]:
    """The chunk a run starts with: ``hardware.vmap_chunk``'s number, or None (the whole meta-batch) for null and
    auto."""
    return None if setting in (None, "auto") else int(setting)


def fitted(meta_step: Callable[[], tuple], parts, tasks: int) -> tuple:
    """``meta_step()`` on a meta-batch of ``tasks``, run again in halved chunks (``parts.vmap_chunk``) while it runs
    out of memory under ``hardware.vmap_chunk=auto``.

    Raises:
        RunError: out of memory where no smaller chunk is left to try, naming the fix.
    """
    while True:
        try:
            return meta_step()
        except torch.OutOfMemoryError as err:
            if parts.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise  # a CUDA graph's capture cannot be retried inside itself: see metarun.runner.captured.Replays
            parts.vmap_chunk = halved(parts, tasks, err)


def halvable(parts, tasks: int) -> bool:
    """Whether ``hardware.vmap_chunk=auto`` has a smaller chunk than ``parts.vmap_chunk`` left to try on ``tasks``."""
    return parts.task_parallel == "vmap" and parts.hardware.vmap_chunk == "auto" and \
        min(parts.vmap_chunk or tasks, tasks) > 1


def halved_if_halvable(parts, tasks: int) -> bool:
    """Whether ``parts.vmap_chunk`` was halved (``halved``) after running out of memory: where it is ``halvable``."""
    if not halvable(parts, tasks):
        return False
    parts.vmap_chunk = halved(parts, tasks)
    return True


def halved(parts, tasks: int, err: Optional[torch.OutOfMemoryError] = None) -> int:
    """The next chunk after running out of memory with ``parts.vmap_chunk``, said in one line; or the RunError."""
    chunk = min(parts.vmap_chunk or tasks, tasks)
    vmapped = parts.task_parallel == "vmap"
    if not halvable(parts, tasks):
        held = f"{chunk} of its {tasks} tasks at once (vmap)" if vmapped else "one task at a time (loop)"
        fix = "set hardware.vmap_chunk=auto (vmap in chunks that fit)" if vmapped and chunk > 1 else ONE_TASK_FIX
        raise RunError(f"out of {parts.device.type.upper()} memory in a meta-step holding {held}; {fix}") from err
    smaller = (chunk + 1) // 2
    if parts.device.type == "cuda":
        torch.cuda.empty_cache()  # the failed attempt's blocks go back before the smaller one allocates
    print(f"hardware.vmap_chunk=auto: out of memory with {chunk} tasks at once; backpropagating {smaller} at a time "
          "from now on", flush=True)
    return smaller
