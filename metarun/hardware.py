"""Device choice, threads, seeding and task parallelism from the ``hardware`` config."""

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


def configure(cfg, seed: int) -> torch.device:
    """Seed every random stream, apply thread and determinism settings, and return the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return resolve_device(cfg)


def task_parallel_mode(cfg) -> str:
    """``vmap`` or ``loop`` for ``hardware.task_parallel``; ``auto`` batches tasks with vmap."""
    return "vmap" if cfg.task_parallel == "auto" else cfg.task_parallel
