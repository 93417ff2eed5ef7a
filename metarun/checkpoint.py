"""Checkpoints written atomically: a kill mid-write never leaves a broken file behind."""

from pathlib import Path

import torch

from metarun.atomic import atomic_path


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device = torch.device("cpu")) -> dict:
    """Read a checkpoint written by ``save_checkpoint``; tensors land on ``device``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a run's checkpoints/last.pt")
    # our own checkpoints hold the resolved config and RNG states next to tensors, so not weights_only
    return torch.load(path, map_location=device, weights_only=False)


def restore_buffers(model: torch.nn.Module, state: dict) -> None:
    """Copy a checkpoint's buffers (batch-norm running averages, when kept) into ``model``."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(state["buffers"][name])
