"""The ``threads`` task mapping: a meta-batch's tasks spread over the CPU's cores, whole tasks per thread.

torch's own intra-op threads split each of a few-shot task's small operators across cores, which scales
badly (the pieces are too small to pay for the synchronisation). Here every worker thread runs whole tasks on
one intra-op thread; torch releases the GIL inside its kernels, so the workers run in parallel. Each task's
gradients come back separately and are summed in task order, so a run is deterministic and its gradients are
the per-task loop's, bit for bit, whatever order the threads finish in.

The pool is made once per process (starting threads for every meta-step would cost more than it saves) and
sized by ``hardware.available_cores()``. Grad mode and CPU autocast are thread-local in torch: each task runs
with the caller's.
"""

from concurrent.futures import ThreadPoolExecutor

import torch

from metarun.utils.hardware import available_cores

_pools = {}


def _pool() -> ThreadPoolExecutor:
    """The process's worker threads, one per available core, each with one intra-op thread."""
    workers = available_cores()
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="metarun-task",
                                             initializer=torch.set_num_threads, initargs=(1,))
    return _pools[workers]


def map_in_threads(fn, count: int) -> list:
    """``[fn(0), ..., fn(count - 1)]``, computed on the worker threads with the caller's grad mode and autocast."""
    grad_enabled = torch.is_grad_enabled()
    autocast = dict(device_type="cpu", dtype=torch.get_autocast_dtype("cpu"), enabled=torch.is_autocast_enabled("cpu"))

    def run(index: int):
        with torch.set_grad_enabled(grad_enabled), torch.autocast(**autocast):
            return fn(index)

    return list(_pool().map(run, range(count)))
