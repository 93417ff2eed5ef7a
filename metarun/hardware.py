"""Device choice, threads, seeding and numeric precision from the ``hardware`` config."""

import contextlib
import random

import numpy as np
import torch

from metarun.errors import RunError


def resolve_device(cfg) -> torch.device:
    """The device ``hardware.device`` names; ``auto`` is the first CUDA device when there is one."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as err:
        raise ValueError(f"hardware.device={cfg.device} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"hardware.device={cfg.device} but no CUDA device is visible; use hardware=cpu or hardware=auto")
    return device


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def configure(cfg, seed: int) -> torch.device:
    """Seed every random stream, apply thread, determinism and TF32 settings, and return the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(cfg)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise RunError("hardware.precision=fp16 needs a CUDA device; use bf16 or fp32")
    # TF32 (10-bit mantissa) matmuls and convolutions on Ampere and later GPUs; no effect elsewhere
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    return device


def autocast(cfg, device: torch.device):
    """The autocast context of ``hardware.precision`` on ``device``; fp32 runs as it is."""
    dtype = PRECISIONS[cfg.precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def grad_scaler(cfg, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaler (small gradients would underflow to zero); a pass-through for fp32 and bf16."""
    return torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
