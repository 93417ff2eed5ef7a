"""Meta-training throughput (tasks/s): metarun's engine against a per-task loop in the style of its peers.

    python scripts/bench.py [--quick] [--device cpu|cuda] [--threads N] [--settings maml-omniglot,...]

Each measurement is one full meta-step repeated (forward, backward, Adam step) on a fixed meta-batch of
synthetic random images of the setting's shape, made on the device (the sampler's cost is not counted; see
``scripts/bench_data.py`` for that). Settings:
  * maml-omniglot: MAML second order, 20-way 1-shot, 15 queries, 28x28, Conv-4 (64, MAML's stride-2 Omniglot
    network), meta-batch 16, 5 inner steps.
  * maml-miniimagenet: MAML second order, 5-way 1-shot, 15 queries, 84x84 RGB, Conv-4 of width 32, meta-batch
    4, 5 inner steps.
  * protonet-miniimagenet: ProtoNet, 5-way 5-shot, 15 queries, 84x84 RGB, ResNet-12, meta-batch 2. On the CPU
    its widths are quartered (16-40-80-160; the full network takes about a minute per task on one core).
Implementations, in the same process:
  * metarun-auto / -vmap / -loop: ``engine.meta_backward`` (as the training loop) over the algorithm's real
    ``meta_loss``; auto is the mode ``engine.tune`` picks by timing both with the clock below (its timing is not
    counted; the line says what it chose).
  * metarun-loop-checkpoint (MAML): ``algo.checkpoint_inner=true``, inner steps recomputed in the backward pass.
  * metarun-auto-bf16 (CUDA only): ``hardware.precision=bf16``.
  * reference: the peers' (learn2learn, torchmeta examples) per-task Python loop over an ``nn.Module`` (metarun's
    own Conv-4 / ResNet-12, so only the execution differs): inner steps with ``torch.autograd.grad(...,
    create_graph=True)`` and a functional forward with the fast weights, ``backward()`` per task, one Adam step.
  * higher: ``higher.innerloop_ctx`` when ``import higher`` works (not a dependency; a note line otherwise).
Timing: warm-up steps, then rounds that run every implementation once in turn, the fastest round counting
(CUDA synchronised around each step). With one CPU thread (``--threads 1``) a step is timed in the process's
CPU time (``clock: process``), which leaves out the time other work on a shared machine holds the core;
otherwise in wall time (``clock: wall``). Prints one JSON line per measurement (``impl, algo, setting, device,
tasks_per_s, peak_mem_mb, ...``) and a table with each implementation's speed relative to the reference.
``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU it is the growth of the process's
peak resident set over the warm-up step (Linux with glibc: freed memory is trimmed and the peak reset through
``/proc/self/clear_refs``; null elsewhere).
``--quick`` runs tiny networks and budgets (a smoke test, not a measurement).
"""

import argparse
import ctypes
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.func import functional_call

from metarun.algos import maml, protonet
from metarun.config import MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.engine import Setup, functional_forward, meta_backward, tune
from metarun.models import without_head
from metarun.models.conv4 import Conv4
from metarun.models.resnet12 import ResNet12
from metarun.objectives import OBJECTIVES

CLASSIFY = OBJECTIVES["classification"]
SETTINGS = {
    "maml-omniglot": dict(algo="maml", ways=20, shots=1, queries=15, shape=(1, 28, 28), meta_batch=16,
                          inner_steps=5, inner_lr=0.4,
                          model=lambda shape, ways: Conv4(shape, ways, 64, max_pool=False)),
    "maml-miniimagenet": dict(algo="maml", ways=5, shots=1, queries=15, shape=(3, 84, 84), meta_batch=4,
                              inner_steps=5, inner_lr=0.01, model=lambda shape, ways: Conv4(shape, ways, 32)),
    "protonet-miniimagenet": dict(algo="protonet", ways=5, shots=5, queries=15, shape=(3, 84, 84), meta_batch=2,
                                  model=lambda shape, ways: ResNet12(shape, ways)),
}
CPU_RESNET12_WIDTHS = [16, 40, 80, 160]
# (warm-up steps, timed rounds) per implementation
REPS = {"cpu": (1, 6), "cuda": (3, 20)}
QUICK = dict(meta_batch=2, queries=2, reps=(1, 1))


def synthetic_batch(setting: dict, device) -> TaskBatch:
    """A meta-batch of random images and balanced labels (class-major), as the sampler hands it over."""
    generator = torch.Generator(device=device).manual_seed(0)

    def split(per_class: int):
        x = torch.randn(setting["meta_batch"], setting["ways"] * per_class, *setting["shape"], device=device,
                        generator=generator)
        y = torch.arange(setting["ways"], device=device).repeat_interleave(per_class).expand(setting["meta_batch"], -1)
        return x, y.contiguous()

    return TaskBatch(*split(setting["shots"]), *split(setting["queries"]))


def build(setting: dict, device, quick: bool) -> torch.nn.Module:
    """The setting's network, seeded (every implementation starts from the same weights)."""
    torch.manual_seed(0)
    if quick:
        model = Conv4(setting["shape"], setting["ways"], width=4, max_pool=setting["shape"][1] > 28)
    elif setting["algo"] == "protonet" and device.type == "cpu":
        model = ResNet12(setting["shape"], setting["ways"], CPU_RESNET12_WIDTHS)
    else:
        model = setting["model"](setting["shape"], setting["ways"])
    return (without_head(model) if setting["algo"] == "protonet" else model).to(device)


def metarun_step(setting: dict, model, batch, mode: str, hardware, checkpoint_inner: bool = False):
    """One metarun meta-step as ``metarun.train`` runs it, and the Setup whose ``mode`` it reads."""
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    if setting["algo"] == "maml":
        algorithm = maml
        cfg = OmegaConf.structured(MAMLConfig(inner_steps=setting["inner_steps"], inner_lr=setting["inner_lr"],
                                              checkpoint_inner=checkpoint_inner))
    else:
        algorithm, cfg = protonet, None
    forward = functional_forward(model)
    parts = Setup(None, CLASSIFY, algorithm, model, forward, params, batch.query_x.device, mode, hardware)
    task_fn = lambda p, *task: algorithm.meta_loss(forward, p, *task, cfg, CLASSIFY)  # noqa: E731
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        meta_backward(task_fn, params, batch, parts.mode, lambda loss: loss / batch.num_tasks, parts.autocast)
        optimizer.step()

    return step, parts, task_fn, params


def reference_step(setting: dict, model, batch):
    """The peers' meta-step: a Python loop over tasks, ``autograd.grad(create_graph=True)``, backward per task."""
    names = [name for name, _ in model.named_parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tasks = batch.num_tasks

    def maml_task(sx, sy, qx, qy):
        fast = list(model.parameters())
        for _ in range(setting["inner_steps"]):
            loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx,)), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [w - setting["inner_lr"] * g for w, g in zip(fast, grads)]
        return F.cross_entropy(functional_call(model, dict(zip(names, fast)), (qx,)), qy)

    def protonet_task(sx, sy, qx, qy):
        # support and query embedded apart, as metarun's ProtoNet does (batch norm sees each set on its own)
        support, query = model(sx), model(qx)
        prototypes = support.view(setting["ways"], setting["shots"], -1).mean(1)
        return F.cross_entropy(-torch.cdist(query, prototypes) ** 2, qy)

    task_loss = maml_task if setting["algo"] == "maml" else protonet_task

    def step():
        optimizer.zero_grad(set_to_none=True)
        for i in range(tasks):
            (task_loss(*(t[i] for t in batch.tensors())) / tasks).backward()  # frees each task's graph
        optimizer.step()

    return step


def higher_step(setting: dict, model, batch):
    """The meta-step with ``higher.innerloop_ctx`` (MAML only), or None when higher is not installed."""
    try:
        import higher
    except ImportError:
        return None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner = torch.optim.SGD(model.parameters(), lr=setting["inner_lr"])

    def step():
        optimizer.zero_grad(set_to_none=True)
        for sx, sy, qx, qy in zip(*batch.tensors()):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(setting["inner_steps"]):
                    diffopt.step(F.cross_entropy(fmodel(sx), sy))
                (F.cross_entropy(fmodel(qx), qy) / batch.num_tasks).backward()
        optimizer.step()

    return step


def synchronize(device) -> None:
    """Wait for queued device work, so timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    """Start a peak-memory measurement; returns the baseline in bytes (None where it cannot be measured)."""
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


def _proc_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def clock(device):
    """The process's CPU time for one CPU thread (it excludes the time other work on a shared machine holds the
    core), else wall time."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def timed(steps: dict, device, reps) -> dict:
    """``{impl: (seconds per step, peak MB)}``: ``reps[0]`` warm-up steps each (peak memory is taken over them),
    then ``reps[1]`` rounds that run every implementation once in turn; the fastest round counts, so load from
    other work on a shared machine slows all implementations alike and barely shows."""
    now = clock(device)
    peaks, seconds = {}, {impl: [] for impl in steps}
    for impl, step in steps.items():
        baseline = reset_peak(device)
        for _ in range(reps[0]):
            step()
        synchronize(device)
        peaks[impl] = peak_mb(device, baseline)
    for _ in range(reps[1]):
        for impl, step in steps.items():
            start = now()
            step()
            synchronize(device)
            seconds[impl].append(now() - start)
    return {impl: (min(seconds[impl]), peaks[impl]) for impl in steps}


def measure(name: str, setting: dict, device, reps, quick: bool) -> list:
    """Every implementation on one setting; one JSON line each. Returns the lines."""
    batch = synthetic_batch(setting, device)
    steps = {}
    fp32 = SimpleNamespace(precision="fp32", compile=False)
    step, parts, task_fn, params = metarun_step(setting, build(setting, device, quick), batch, "auto", fp32)
    chose = tune(parts, task_fn, params, lambda: batch, timer=clock(device))
    steps["metarun-auto"] = step, {"chose": parts.mode, "tune_s": {k: round(v, 4) for k, v in chose.items()}}
    for mode in ("vmap", "loop"):
        steps[f"metarun-{mode}"] = metarun_step(setting, build(setting, device, quick), batch, mode, fp32)[0], {}
    if setting["algo"] == "maml":
        steps["metarun-loop-checkpoint"] = metarun_step(setting, build(setting, device, quick), batch, "loop", fp32,
                                                        checkpoint_inner=True)[0], {}
    if device.type == "cuda":
        step, parts, task_fn, params = metarun_step(setting, build(setting, device, quick), batch, "auto",
                                                    SimpleNamespace(precision="bf16", compile=False))
        tune(parts, task_fn, params, lambda: batch, timer=clock(device))
        steps["metarun-auto-bf16"] = step, {"chose": parts.mode}
    steps["reference"] = reference_step(setting, build(setting, device, quick), batch), {}
    if setting["algo"] == "maml":
        step = higher_step(setting, build(setting, device, quick), batch)
        if step is None:
            emit(setting=name, impl="higher", note="skipped: `import higher` failed (optional; pip install higher)")
        else:
            steps["higher"] = step, {}
    lines = []
    measured = timed({impl: step for impl, (step, _) in steps.items()}, device, reps)
    for impl, (step, extra) in steps.items():
        seconds, peak = measured[impl]
        lines.append(emit(impl=impl, algo=setting["algo"], setting=name, device=str(device),
                          tasks_per_s=round(setting["meta_batch"] / seconds, 3), peak_mem_mb=peak,
                          meta_batch=setting["meta_batch"], seconds_per_step=round(seconds, 4), reps=list(reps),
                          threads=torch.get_num_threads(),
                          clock="process" if clock(device) is time.process_time else "wall",
                          load_avg_1min=round(os.getloadavg()[0], 2), **extra))
    return lines


def table(lines: list) -> str:
    """The summary: tasks/s, ratio to the reference and peak memory per setting and implementation."""
    rows = ["| setting | impl | tasks/s | vs reference | peak MB |", "|---|---|---:|---:|---:|"]
    for name in dict.fromkeys(line["setting"] for line in lines):
        these = [line for line in lines if line["setting"] == name]
        reference = next(line["tasks_per_s"] for line in these if line["impl"] == "reference")
        for line in these:
            impl = line["impl"] + (f" ({line['chose']})" if "chose" in line else "")
            rows.append(f"| {name} | {impl} | {line['tasks_per_s']:.3g} | {line['tasks_per_s'] / reference:.2f}x | "
                        f"{line['peak_mem_mb']} |")
    return "\n".join(rows)


def emit(**fields) -> dict:
    """One JSON line on stdout; returns ``fields``."""
    print(json.dumps(fields), flush=True)
    return fields


def main(argv=None) -> None:
    """Parse the arguments and measure every chosen setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets: checks the script runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (as hardware.num_threads); default: torch's")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of the settings")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        raise ValueError(f"--settings {','.join(unknown)} is not one of {', '.join(SETTINGS)}")
    lines = []
    for name in names:
        setting = {**SETTINGS[name], **(QUICK if args.quick else {})}
        reps = setting.pop("reps", None) or REPS[device.type]
        lines += measure(name, setting, device, reps, args.quick)
    print(table(lines))


if __name__ == "__main__":
    main()
