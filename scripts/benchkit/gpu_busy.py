"""The GPU-busy fraction (``--extras gpu-busy``, CUDA only): over 200 training iterations of metarun-auto on
maml-omniglot-5w1s, eager and with ``hardware.cuda_graphs=true`` (one line each), after a warm-up, the share of the
wall time in which the GPU runs anything, from torch.profiler's device activities (kernels, copies and memsets; the
union of their intervals, so concurrent streams count once) over the wall span the iterations take (from a
synchronised start to a synchronised end). Only the device's activities are profiled: recording every host-side op
would slow the host and understate the figure. The step is ``bench.py``'s (a fixed synthetic meta-batch, no sampler
and no logging)."""

import time
from typing import Iterable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .impl import Options
from .metarun_impls import metarun
from .settings import configured, network, synthetic_batch

BUSY_SETTING, WARMUP = "maml-omniglot-5w1s", 3
ITERATIONS = {"cuda": 200, "quick": 5}


def union_length(intervals: Iterable[tuple]) -> float:
    """The total length covered by the ``(start, end)`` intervals, overlaps counted once."""
    total, covered_to = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > covered_to:
            total += end - max(start, covered_to)
            covered_to = end
    return total


def busy_fraction(intervals: Iterable[tuple], wall: float) -> float:
    """The share of a ``wall`` span covered by ``intervals`` (in the same unit, all inside the span)."""
    return union_length(intervals) / wall


def device_intervals(events) -> list:
    """``(start, end)`` in microseconds of the profiler ``events`` that ran on a CUDA device, leaving out the user
    annotations kineto mirrors onto the GPU's timeline (a span, not work)."""
    return [(event.time_range.start, event.time_range.end) for event in events
            if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)]


def measure_gpu_busy(options: Options, quick: bool) -> list:
    """The GPU-busy lines, JSON-ready, of metarun-auto eager and with ``hardware.cuda_graphs=true`` (a few iterations
    with ``quick``; a ``note`` in place of the fraction where the profiler saw no GPU activity); none off CUDA."""
    if options.device.type != "cuda":
        return []
    setting = configured(BUSY_SETTING, options.device, quick)
    batch = synthetic_batch(setting, options.device)
    eager = metarun(setting, batch, options, "auto", None)[0]
    graphs = metarun(setting, batch, options, eager.extra["chose"], None, cuda_graphs=True)[0]
    graphs.extra["chose"] = eager.extra["chose"]
    return [busy_line(eager, "metarun-auto", setting, options.device, quick),
            busy_line(graphs, "metarun-cuda-graphs", setting, options.device, quick)]


def busy_line(impl, name: str, setting: dict, device: torch.device, quick: bool) -> dict:
    """One implementation's GPU-busy line over ``ITERATIONS`` after ``WARMUP`` iterations (which, with CUDA graphs,
    warm up and capture)."""
    impl.prepare()
    for _ in range(WARMUP):
        impl.step()
    iterations = ITERATIONS["quick" if quick else "cuda"]
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        start = time.perf_counter()
        for _ in range(iterations):
            impl.step()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    intervals = device_intervals(profiler.events())
    line = dict(kind="gpu-busy", setting=BUSY_SETTING, impl=name, chose=impl.extra["chose"], device=str(device),
                network=network(setting), iterations=iterations, wall_s=round(wall, 4))
    if not intervals:  # not an idle GPU: the step ran kernels, the profiler saw none
        return {**line, "note": "the profiler recorded no GPU activity (is CUPTI available to this process?)"}
    fraction = busy_fraction(intervals, wall * 1e6)
    return {**line, "busy_s": round(fraction * wall, 4), "busy_fraction": round(fraction, 4)}
