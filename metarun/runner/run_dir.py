"""The run directory one process owns: a lock against a second process, and Hydra's record of the run
(``.hydra/``) written only once the run has been accepted.

Hydra would write ``.hydra/config.yaml`` and ``overrides.yaml`` before metarun sees the config
(``hydra.output_subdir`` is null in conf/config.yaml), so a refused command, such as a resume with another
seed, would overwrite the record of the run the directory holds. ``RunDirectory.record`` writes them instead,
after the lock is held and the resume checked.
"""

import contextlib
import fcntl
import os
import shutil
import socket
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metarun.runner.distributed import Group
from metarun.utils.atomic import atomic_path
from metarun.utils.disk import missing_folders, remove_made
from metarun.utils.errors import RunError, StartRefused, writing

LOCK = ".lock"
# what a run directory is kept for: a command refused at start-up has written none of these
PRODUCTS = ("checkpoints", "metrics.jsonl", "results.json")


class RunDirectory:
    """Context manager holding an exclusive lock on ``path`` (the lock file names its holder's pid and host).

    The lock is ``flock``'s: the kernel drops it when the holder dies, so a killed run's lock is taken over
    by the next process, which says so.
    """

    def __init__(self, path: Path, group: Group = Group()):
        """Lock ``path`` on ``group``'s main rank only (torchrun's ranks share their main rank's directory)."""
        self.path, self.group, self.owner, self._file = Path(path), group, group.is_main, None

    def __enter__(self) -> "RunDirectory":
        """Take the lock, or raise RunError (on every rank of the group) naming the process that holds it."""
        refused = None
        if self.owner:
            try:
                self._lock()
            except RunError as err:
                refused = err
        if self.group.any(refused is not None):  # the other ranks stop too, rather than wait for rank 0
            raise refused or RunError(f"rank 0 could not take the run directory {self.path}; see its error")
        return self

    def _lock(self) -> None:
        with writing(self.path / LOCK, run_dir=self.path):  # a read-only or full disk, at start
            self.path.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path / LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder() or "another process"
            self._file.close()
            self._file = None
            raise RunError(f"{self.path} is in use by {holder}; wait for it to finish, or give this run its own "
                           "hydra.run.dir") from None
        except OSError as err:  # a file system without flock (Lustre without -o flock): run, but say so
            print(f"warning: cannot lock {self.path} ({err.strerror}); nothing stops a second process from "
                  "running in it")
        left = self._holder()
        if left:
            print(f"note: took over the lock of {self.path} left by {left}, which no longer runs")
        with writing(self.path / LOCK, run_dir=self.path):
            self._write(f"pid {os.getpid()} on {socket.gethostname()}")

    def _holder(self) -> str:
        self._file.seek(0)
        return self._file.read().strip()

    def _write(self, text: str) -> None:
        self._file.seek(0)
        self._file.truncate()
        self._file.write(text)
        self._file.flush()

    def record(self, cfg) -> None:
        """Write Hydra's ``.hydra/{config,hydra,overrides}.yaml`` for the job of ``cfg``, when run by Hydra."""
        if not (self.owner and HydraConfig.initialized()):
            return
        hydra = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
        files = {"config.yaml": cfg, "hydra.yaml": hydra, "overrides.yaml": hydra.hydra.overrides.task}
        for name, node in files.items():
            target = self.path / ".hydra" / name
            with writing(target, run_dir=self.path), atomic_path(target) as tmp:
                tmp.write_text(OmegaConf.to_yaml(node), encoding="utf-8")

    def __exit__(self, *exc) -> bool:
        """Release the lock; an empty lock file means "left cleanly"."""
        if self._file is not None:
            # the run's own outcome (perhaps a full disk) is the one to report; the lock goes with the file
            with contextlib.suppress(OSError):
                self._write("")
            with contextlib.suppress(OSError):
                self._file.close()
        return False


class RunFolders(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): before Hydra makes the run (or sweep) directory,
    make it here, so that a folder that cannot be made is one line naming ``hydra.run.dir`` instead of Hydra's
    traceback, and remember which of its folders this command made: a refused command removes them again
    (``discard_unstarted``), leaving no empty ``outputs/runs/`` behind."""

    made: list = []  # the folders the last single run's start made, deepest first (one run per process)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        """Make ``hydra.run.dir``, remembering the folders made."""
        RunFolders.made = make_folder(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Make ``hydra.sweep.dir`` (its jobs' folders are Hydra's) and save the sweep's ``multirun.yaml`` in it, as
        Hydra's basic sweeper does and the Optuna sweeper does not: job folders are named from its arguments
        (``metarun.config.run_names.swept_dirname``)."""
        sweep_dir = Path(config.hydra.sweep.dir)
        make_folder(sweep_dir, "hydra.sweep.dir")
        OmegaConf.save(config, sweep_dir / "multirun.yaml")


def make_folder(path: Path, key: str) -> list:
    """Make the folder ``path`` of the config ``key``; return the folders made, deepest first.

    Raises:
        StartRefused: it cannot be made (below a regular file, in a read-only or virtual file system), named.
    """
    try:
        missing = missing_folders(path, key)
        path.mkdir(parents=True, exist_ok=True)
    except RunError as err:  # a link loop, named
        raise StartRefused(str(err)) from None
    except OSError as err:
        blocker = next((folder for folder in path.parents if folder.exists()), None)
        cause = (f"{blocker} is a file, not a folder" if blocker is not None and not blocker.is_dir() else
                 f"{err.strerror or err}")
        raise StartRefused(f"cannot create the run directory {path} ({cause}); set {key} to a folder this process "
                           "can write") from None
    return missing


def is_empty(path: Path) -> bool:
    """Whether ``path`` is a folder with nothing in it (as Hydra creates a job's run directory)."""
    return path.is_dir() and next(path.iterdir(), None) is None


def discard_unstarted(path: Path) -> None:
    """Remove the run directory ``path`` of a job that failed before it wrote any of ``PRODUCTS`` (and that no
    other process holds), so a refused command leaves no directory behind."""
    if any((path / name).exists() for name in PRODUCTS):
        return
    with contextlib.suppress(FileNotFoundError), open(path / LOCK, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another process runs there: its directory, not ours
        except OSError:
            pass  # a file system without flock: nothing to learn from the lock
    shutil.rmtree(path, ignore_errors=True)
    remove_made(RunFolders.made)  # the parents this command made for it (outputs/runs/), while still empty
