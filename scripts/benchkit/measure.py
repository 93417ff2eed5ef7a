"""How a setting is measured: warm-up steps with the peak memory taken over them (CUDA's allocator statistics, or
the growth of the process's peak resident set on Linux), then rounds that run every implementation once in turn,
the fastest counting, and one JSON-ready line per measurement and per missing peer."""

import ctypes
import gc
import os
import time
from pathlib import Path

import torch

from .impl import Impl, Options
from .implementations import PEERS, implementations
from .settings import network, synthetic_batch

# (warm-up steps, timed rounds) per implementation; on CUDA the benchmark-off cuDNN needs no more warm-up
REPS = {"cpu": (1, 6), "cuda": (1, 10), "quick": (1, 1)}
# seconds of timed rounds per setting, after which they stop once there are 2 (CUDA: keeps a full run near 3 min)
BUDGET_S = {"cpu": 1800, "cuda": 10}


def synchronize(device) -> None:
    """Wait for queued device work, so timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """``{impl: (seconds per step, peak MB, timed rounds, intra-op threads)}``: ``reps[0]`` warm-up steps each
    (peak memory is taken over them), then up to ``reps[1]`` rounds that run every implementation once in turn,
    stopping once they have taken ``budget_s`` (wall time) and there are 2; the fastest round counts, so load
    from other work on a shared machine slows all implementations alike and barely shows."""
    device, now = options.device, options.clock
    steps = {impl: training_step(it) for impl, it in impls.items()}
    peaks, threads, seconds = {}, {}, {impl: [] for impl in impls}
    for impl, step in steps.items():
        impls[impl].prepare()
        threads[impl] = torch.get_num_threads()
        baseline = reset_peak(device)
        for _ in range(reps[0]):
            step()
        synchronize(device)
        peaks[impl] = peak_mb(device, baseline)
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
    return {impl: (min(seconds[impl]), peaks[impl], len(seconds[impl]), threads[impl]) for impl in impls}


def measure(name: str, setting: dict, options: Options, reps, budget_s: float) -> list:
    """Every implementation on one setting: a JSON-ready dict per measurement and per missing peer."""
    batch = synthetic_batch(setting, options.device)
    impls, notes = implementations(setting, batch, options)
    measured = timed(impls, options, reps, budget_s)
    speed = {impl: setting["meta_batch"] / seconds for impl, (seconds, *_) in measured.items()}
    best_peer = max((impl for impl in PEERS if impl in speed), key=speed.get)
    lines = [dict(setting=name, impl=impl, note=note) for impl, note in notes.items()]
    for impl, (seconds, peak, rounds, threads) in measured.items():
        lines.append(dict(impl=impl, algo=setting["algo"], setting=name, device=str(options.device),
                          network=network(setting),
                          tasks_per_s=round(speed[impl], 3), peak_mem_mb=peak, meta_batch=setting["meta_batch"],
                          seconds_per_step=round(seconds, 4), warmup=reps[0], rounds=rounds,
                          threads=threads, clock="process" if options.clock is time.process_time else "wall",
                          best_peer=best_peer, vs_best_peer=round(speed[impl] / speed[best_peer], 3),
                          load_avg_1min=round(os.getloadavg()[0], 2), **impls[impl].extra))
    return lines
