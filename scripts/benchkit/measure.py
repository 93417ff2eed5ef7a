"""How a setting is measured: warm-up steps with the peak memory taken over them (CUDA's allocator statistics, or
the growth of the process's peak resident set on Linux), then rounds that run every implementation once in turn, the
fastest counting, one step of the per-task loop under the FLOP counter (the model FLOPs), and one JSON-ready line
per measurement (its FLOP rate and MFU against the device's peak, ``flops``) and per missing peer."""

import ctypes
import gc
import os
import time
from pathlib import Path

import torch

from .flops import count_flops, peak, precision_of, synchronize
from .impl import Impl, Options
from .implementations import PEERS, implementations
from .settings import network, synthetic_batch

# (warm-up steps, timed rounds) per implementation; on CUDA the benchmark-off cuDNN needs no more warm-up
REPS = {"cpu": (1, 6), "cuda": (1, 10), "quick": (1, 1)}
# seconds of timed rounds per setting, after which they stop once there are 2 (CUDA: keeps a full run near 3 min)
BUDGET_S = {"cpu": 1800, "cuda": 10}


def reset_peak(device):
    """Start a peak-memory measurement; returns the baseline in bytes (None where it cannot be measured)."""
    gc.collect()  # graphs an earlier implementation left in reference cycles would be freed mid-measurement
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    # hand memory freed by earlier measurements back to the system, then reset the peak (VmHWM) to the current
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_kib("VmRSS") * 1024


def peak_mb(device, baseline):
    """Peak memory since ``reset_peak`` above its baseline, in MB."""
    if baseline is None:
        return None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_kib("VmHWM") * 1024
    return round((peak - baseline) / 2**20, 1)


def _proc_kib(field_name: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field_name))
    return int(line.split()[1])


def training_step(impl: Impl):
    """One meta-training step of ``impl``: its own, or clear the gradients, its backward, one Adam step."""
    if impl.step is not None:
        return impl.step
    optimizer = torch.optim.Adam(impl.params, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        impl.backward()
        optimizer.step()

    return step


def timed(impls: dict, options: Options, reps, budget_s: float) -> dict:
    """``{impl: {seconds, rounds, peak_mem_mb, threads, cores}}``: ``reps[0]`` warm-up steps each (peak memory is
    taken over them), then up to ``reps[1]`` rounds that run
    every implementation once in turn, stopping once they have taken ``budget_s`` (wall time) and there are 2; the
    fastest round counts (``seconds`` per step), so load from other work on a shared machine slows all
    implementations alike and barely shows. ``threads``: its intra-op threads; ``cores``: those of all its task
    workers."""
    device, now = options.device, options.clock
    steps = {impl: training_step(it) for impl, it in impls.items()}
    found, seconds = {}, {impl: [] for impl in impls}
    for impl, step in steps.items():
        impls[impl].prepare()
        threads = torch.get_num_threads()
        baseline = reset_peak(device)
        for _ in range(reps[0]):
            step()
        synchronize(device)
        found[impl] = dict(peak_mem_mb=peak_mb(device, baseline), threads=threads,
                           cores=threads * impls[impl].workers())
    deadline = time.perf_counter() + budget_s
    for done in range(1, reps[1] + 1):
        for impl, step in steps.items():
            impls[impl].prepare()
            start = now()
            step()
            synchronize(device)
            seconds[impl].append(now() - start)
        if done >= 2 and time.perf_counter() > deadline:
            break
    return {impl: dict(seconds=min(seconds[impl]), rounds=len(seconds[impl]), **found[impl]) for impl in impls}


def significant(value: float) -> float:
    """``value`` to 4 significant digits (a tiny MFU stays above 0)."""
    return float(f"{value:.4g}")


def model_flops(impls: dict) -> int:
    """The setting's model FLOPs per step: one step of metarun's per-task loop under the FLOP counter. The loop runs
    each product of the step once, as the papers count it; vmap's batched convolutions count several times as many
    (grouped over the tasks' own weights), and the threads mapping's workers are out of a dispatch mode's reach."""
    loop = impls["metarun-loop"]
    loop.prepare()
    return count_flops(training_step(loop))


def flop_rates(impl: Impl, found: dict, flops: int, options: Options) -> dict:
    """A line's FLOP fields: the model's ``flops`` per step (what every implementation of the setting computes),
    their rate over its time per step and that over the peak of its precision on its cores (MFU), with where the peak
    comes from and the measured matmul rate."""
    precision = precision_of(impl.precision, options.device)
    peak_tflops, source, matmul = peak(options.device, precision, found["cores"], options.matmul_size, options.clock)
    achieved = flops / found["seconds"] / 1e12
    return dict(flops_per_step=flops, tflops=significant(achieved), precision=precision,
                peak_tflops=significant(peak_tflops), peak_source=source, matmul_tflops=significant(matmul),
                mfu=significant(achieved / peak_tflops))


def measure(name: str, setting: dict, options: Options, reps, budget_s: float) -> list:
    """Every implementation on one setting: a JSON-ready dict per measurement and per missing peer."""
    # what outlives a setting (modules, composed configs, caches) is not scanned again by the collection before each
    # implementation's peak (``reset_peak``): frozen once the earlier settings' garbage is gone, it takes no time
    gc.collect()
    gc.freeze()
    batch = synthetic_batch(setting, options.device)
    impls, notes = implementations(setting, batch, options)
    measured = timed(impls, options, reps, budget_s)
    speed = {impl: setting["meta_batch"] / found["seconds"] for impl, found in measured.items()}
    best_peer = max((impl for impl in PEERS if impl in speed), key=speed.get, default=None)
    flops = model_flops(impls)
    lines = [dict(setting=name, impl=impl, note=note) for impl, note in notes.items()]
    for impl, found in measured.items():
        lines.append(dict(impl=impl, algo=setting["algo"], setting=name, device=str(options.device),
                          network=network(setting),
                          tasks_per_s=round(speed[impl], 3), peak_mem_mb=found["peak_mem_mb"],
                          meta_batch=setting["meta_batch"], seconds_per_step=round(found["seconds"], 4),
                          warmup=reps[0], rounds=found["rounds"], threads=found["threads"], cores=found["cores"],
                          clock="process" if options.clock is time.process_time else "wall", best_peer=best_peer,
                          vs_best_peer=None if best_peer is None else round(speed[impl] / speed[best_peer], 3),
                          **flop_rates(impls[impl], found, flops, options), load_avg_1min=round(os.getloadavg()[0], 2),
                          **impls[impl].extra))
    return lines
