"""Where the trackers write, checked before the data is loaded: a folder they could not write would otherwise stop
the run only once it starts logging, with a traceback, or from TensorBoard's writer thread after training."""

import os
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from metarun.utils.errors import RunError


def run_folder(logger: DictConfig) -> Path:
    """The run directory (``paths.output_dir``) of the run config whose ``logger`` node this is."""
    return Path(OmegaConf.select(logger, "..paths.output_dir"))


def unwritable(folder: Path) -> Optional[str]:
    """Why files cannot be written into ``folder`` (made first where missing), or None; nothing is made here."""
    # a dangling link counts as there: nothing can be made in its place either
    existing = next(path for path in (folder, *folder.parents) if path.exists() or path.is_symlink())
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only for this process"
    return None


def check_folder(switch: str, folder: Path) -> None:
    """A one-line RunError when the tracker that ``switch`` (``logger.<key>=<value>``) turns on cannot write its
    files into ``folder`` in the run directory."""
    problem = unwritable(folder)
    if problem:
        raise RunError(f"{switch} writes into {folder}, but {problem}; move that away or make it writable, set "
                       "hydra.run.dir elsewhere, or turn the tracker off")
