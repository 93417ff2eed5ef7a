"""Device choice, threads, seeding and numeric precision from the ``hardware`` config."""

import contextlib
import os
import random

import numpy as np
import torch

from metarun.utils.allocator import keep_freed_memory
from metarun.utils.errors import RunError


def resolve_device(hardware) -> torch.device:
    """The device ``hardware.device`` names; ``auto`` is the first CUDA device when there is one."""
    if hardware.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(hardware.device)
    except RuntimeError as err:
        raise ValueError(f"hardware.device={hardware.device} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"hardware.device={hardware.device} but no CUDA device is visible; use hardware=cpu or "
                       "hardware=auto")
    return device


# how many jobs run at once on this machine; set by metarun's launcher plugin (hydra_plugins/metarun_launcher)
# for hydra/launcher=local's jobs
PARALLEL_JOBS = "METARUN_PARALLEL_JOBS"
# Models with fewer parameters run on one intra-op thread: their ops are too small to split, so a second thread
# only adds synchronisation, and it stalls whenever another process holds the other core. MAML meta-step, 1 vs 2
# threads, on our 2-core machine beside other work: the sinusoid MLP (1,761 parameters) 13 vs 116 ms, an 8-wide
# Conv-4 on Omniglot (2,061) 64 vs 502 ms. Larger models (Conv-4 32 or 64 wide: 29,000 and 113,000; ResNet-12:
# 12 M) get the job's cores for their convolutions to split; where other work holds those cores, a second thread
# costs them too (64-wide Conv-4: 432 vs 1,613 ms) and hardware.num_threads=1 is the remedy.
SMALL_MODEL = 20_000


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, divided among the jobs that run at once on this machine
    (a local sweep's jobs and torchrun's ranks on this node)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = int(os.environ.get(PARALLEL_JOBS, 1)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, cores // max(1, jobs))


def several_cores(device: torch.device, num_threads) -> bool:
    """Whether a run on ``device`` with ``hardware.num_threads`` may spread tasks over CPU cores (the threads
    mapping): a CPU with several cores available, not held to one thread."""
    return device.type == "cpu" and available_cores() > 1 and num_threads != 1


def intra_op_threads(hardware, model: torch.nn.Module) -> int:
    """torch's intra-op thread count for ``hardware.num_threads``: the number given, or for ``auto`` one thread
    for a small ``model`` and ``available_cores()`` otherwise."""
    if hardware.num_threads not in ("auto", None):  # null: the config of a checkpoint from before auto
        return hardware.num_threads
    return 1 if is_small(model) else available_cores()


def is_small(model: torch.nn.Module) -> bool:
    """Whether ``model`` has fewer than ``SMALL_MODEL`` parameters (the sinusoid MLP, not Conv-4 or ResNet-12)."""
    return sum(p.numel() for p in model.parameters()) < SMALL_MODEL


def keeps_freed_memory(hardware, device: torch.device) -> bool:
    """Whether ``hardware.keep_freed_memory`` asks glibc's heap to keep freed memory (``allocator.keep_freed_memory``):
    on a CPU, for auto where the run has one core (on two cores it was level on MAML 5-way and held 24-62% more
    peak memory, where each thread's arena can keep its own)."""
    wanted = getattr(hardware, "keep_freed_memory", "auto")  # a checkpoint's config from before the key has none
    if device.type != "cpu" or wanted is False:
        return False
    return wanted is True or not several_cores(device, hardware.num_threads)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure(hardware, seed: int) -> torch.device:
    """Seed every random stream, apply a given thread count, determinism, TF32 and ``hardware.keep_freed_memory``,
    and return the device.

    ``hardware.num_threads=auto`` is applied once the model is built (``intra_op_threads``). Inter-op threads stay
    at torch's default: metarun forks no inter-op work, and torch starts that pool only on first use.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if isinstance(hardware.num_threads, int):
        torch.set_num_threads(hardware.num_threads)
    if hardware.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(hardware)
    if keeps_freed_memory(hardware, device):
        keep_freed_memory()
    if hardware.precision == "fp16" and device.type != "cuda":
        raise RunError("hardware.precision=fp16 needs a CUDA device; use bf16 or fp32")
    # TF32 (10-bit mantissa) matmuls and convolutions on Ampere and later GPUs; no effect elsewhere
    torch.backends.cuda.matmul.allow_tf32 = hardware.tf32
    torch.backends.cudnn.allow_tf32 = hardware.tf32
    return device


# precision=auto's bf16: the algorithms whose training step a CPU with AMX tiles (oneDNN's bf16 convolutions)
# ran faster in bf16 than in fp32, to the same test accuracy, on one core (docs/speed.md has the figures)
BF16_ON_AMX = frozenset({"protonet", "matchingnet", "relationnet", "r2d2", "metaoptnet_svm"})


def precision(hardware, device: torch.device, algorithm: str) -> str:
    """``hardware.precision``, with auto resolved for ``algorithm`` (its ``algo.name``) on ``device``: bf16 where it
    was measured faster at the same accuracy (``BF16_ON_AMX`` on a CPU with AMX and AVX-512 bf16), else fp32 (GPUs
    too, until the benchmark has measured bf16 there)."""
    if hardware.precision != "auto":
        return hardware.precision
    return "bf16" if device.type == "cpu" and has_amx() and algorithm in BF16_ON_AMX else "fp32"


def has_amx() -> bool:
    """Whether torch runs bf16 convolutions and matrix products on AMX tiles here: the CPU has AMX and AVX-512 bf16,
    and neither ``ATEN_CPU_CAPABILITY`` nor ``ONEDNN_MAX_CPU_ISA`` holds torch below them (bf16 is slow there)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return (isa == "ALL" or "AMX" in isa) and torch.backends.cpu.get_cpu_capability().startswith("AVX512") and \
        torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported()


def precision_reason(resolved: str) -> str:
    """Why precision=auto resolved to ``resolved``, for the line a run prints."""
    if resolved == "bf16":
        return "this CPU has AMX bf16, where the algorithm trained faster in bf16 to the same accuracy"
    return f"bf16 was measured faster at the same accuracy only for {', '.join(sorted(BF16_ON_AMX))} on a CPU with AMX"


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (resolved: not auto) on ``device``; fp32 runs as it is."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def grad_scaler(hardware, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler (small gradients would underflow to zero); a pass-through for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=hardware.precision == "fp16")
