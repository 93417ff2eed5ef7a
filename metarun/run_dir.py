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
import socket
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from metarun.atomic import atomic_path
from metarun.errors import RunError, write_error

LOCK = ".lock"


class RunDirectory:
    """Context manager holding an exclusive lock on ``path`` (the lock file names its holder's pid and host).

    The lock is ``flock``'s: the kernel drops it when the holder dies, so a killed run's lock is taken over
    by the next process, which says so.
    """

    def __init__(self, path: Path, owner: bool = True):
        """Lock ``path`` only where ``owner`` (torchrun's ranks share their main rank's directory)."""
        self.path, self.owner, self._file = Path(path), owner, None

    def __enter__(self) -> "RunDirectory":
        """Take the lock, or raise RunError naming the process that holds it."""
        if not self.owner:
            return self
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path / LOCK, "a+", encoding="utf-8")
        except OSError as err:  # a read-only or full disk, at start
            raise write_error(self.path / LOCK, err) from err
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder() or "another process"
            self._file.close()
            raise RunError(f"{self.path} is in use by {holder}; wait for it to finish, or give this run its own "
                           "hydra.run.dir") from None
        left = self._holder()
        if left:
            print(f"note: took over the lock of {self.path} left by {left}, which no longer runs")
        try:
            self._write(f"pid {os.getpid()} on {socket.gethostname()}")
        except OSError as err:
            self._file.close()
            raise write_error(self.path / LOCK, err) from err
        return self

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
            try:
                with atomic_path(target) as tmp:
                    tmp.write_text(OmegaConf.to_yaml(node), encoding="utf-8")
            except OSError as err:
                raise write_error(target, err) from err

    def __exit__(self, *exc) -> bool:
        """Release the lock; an empty lock file means "left cleanly"."""
        if self._file is not None:
            # the run's own outcome (perhaps a full disk) is the one to report; the lock goes with the file
            with contextlib.suppress(OSError):
                self._write("")
            with contextlib.suppress(OSError):
                self._file.close()
        return False
