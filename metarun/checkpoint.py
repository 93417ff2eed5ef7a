"""Checkpoints written atomically: a kill mid-write never leaves a broken file behind, and a write or read that
fails names the file and the fix in one line."""

import pickle
from pathlib import Path
from typing import Optional

import torch

from metarun.atomic import atomic_path
from metarun.errors import RunError, first_line, write_error

# what every metarun checkpoint holds; a torch file without them is someone else's
REQUIRED = ("params", "config")
# how torch's zip reader and writer report bytes that are not a torch file, or a write that did not land
READER_FAILURE = "PytorchStreamReader"
WRITER_FAILURES = ("PytorchStreamWriter", "inline_container")


def save_checkpoint(path: Path, state: dict, run_dir: Optional[Path] = None) -> None:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename.

    Args:
        run_dir: the run directory, named in the error's hint to continue the run.

    Raises:
        RunError: the file cannot be written (read-only folder, no space left); ``path``'s previous version,
            if any, is untouched.
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:
        # torch reports a failed write as a RuntimeError without an errno; other RuntimeErrors are not about the file
        if isinstance(err, RuntimeError) and not any(text in str(err) for text in WRITER_FAILURES):
            raise
        raise write_error(Path(path), err, state_bytes(state), run_dir) from err


def state_bytes(state) -> int:
    """The bytes of the tensors in ``state`` (nested dicts and lists): about the size of its checkpoint."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    return 0


def load_checkpoint(path: Path, device: torch.device = torch.device("cpu")) -> dict:
    """Read a checkpoint written by ``save_checkpoint``; tensors land on ``device``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunError: ``path`` is truncated, not a torch file, or a torch file that is not a metarun checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise RunError(f"checkpoint {path} is a folder; pass a checkpoint file in it, e.g. {path}/checkpoints/best.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a run's checkpoints/last.pt")
    try:
        # our own checkpoints hold the resolved config and RNG states next to tensors, so not weights_only
        state = torch.load(path, map_location=device, weights_only=False)
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, RuntimeError) as err:
        if not is_corrupt(err):
            raise  # a permission or memory problem: the file may be fine
        raise RunError(f"cannot read checkpoint {path}: it is truncated or not a torch file "
                       f"({err.__class__.__name__}: {first_line(err)[:80]}); pass a run's checkpoints/best.pt or last.pt") from err
    missing = [key for key in REQUIRED if not isinstance(state, dict) or key not in state]
    if missing:
        raise RunError(f"{path} is a torch file but not a metarun checkpoint (it has no {', '.join(missing)}); "
                       "pass a run's checkpoints/best.pt or last.pt")
    return state


def is_corrupt(err: Exception) -> bool:
    """Whether ``torch.load``'s ``err`` says the bytes are not a torch file (truncated, text, foreign)."""
    if isinstance(err, RuntimeError):
        return READER_FAILURE in str(err)
    return not isinstance(err, PermissionError)


def restore_buffers(model: torch.nn.Module, state: dict) -> None:
    """Copy a checkpoint's buffers (batch-norm running averages, when kept) into ``model``."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(state["buffers"][name])
