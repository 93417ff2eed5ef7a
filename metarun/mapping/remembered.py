"""What ``hardware.task_parallel=auto`` chose, remembered per machine and setting.

vmap and the per-task loop agree only to float rounding, so a mapping picked by timing alone could make two runs of
one command with one seed differ in their last digits whenever the timings are close (on a busy machine, often).
The first run of a setting times the mappings and writes its choice to ``hardware.tuning_file``; every later run of
that setting on the same kind of machine reuses it, skips the timing, and reruns bit for bit. Deleting the file
times afresh. A file that cannot be read or written never stops a run: it is timed as if there were none, with one
warning line; a file that holds something else (a folder, other JSON, text that is not JSON) is never written over.
"""

import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import platform
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from metarun.utils import hardware
from metarun.utils.atomic import atomic_path
from metarun.utils.errors import first_line


def machine(device: torch.device) -> dict:
    """What makes one machine time the mappings differently from another: processor, cores, GPU, torch."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cores": hardware.available_cores(), "gpu": gpu, "torch": torch.__version__}


class RememberedChoice:
    """The remembered timings of one setting in the JSON file ``path``: ``{key: {"mode", "seconds", ...}}``."""

    def __init__(self, path, setting: dict, device: torch.device, label: str):
        """``setting``: everything the timed meta-step depends on (plain values); ``label`` names it for people."""
        self.path, self.setting, self.device, self.label = Path(path).expanduser(), setting, device, label
        self.recalled = self.warned = False

    @functools.cached_property
    def key(self) -> str:
        """This machine's and setting's entry in the file; worked out only when ``auto`` has a mapping to choose."""
        identity = json.dumps({"machine": machine(self.device), "setting": self.setting}, sort_keys=True, default=str)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def held(self):
        """Hold the file's lock, so parallel jobs of a sweep time a new setting once, not each in turn."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError:
            yield  # a read-only place: each job times for itself
            return
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def recall(self) -> Optional[dict]:
        """The seconds per meta-step of each mapping timed before for this setting, or None."""
        entry = (self._entries() or {}).get(self.key)
        self.recalled = isinstance(entry, dict) and isinstance(entry.get("seconds"), dict)
        return entry["seconds"] if self.recalled else None

    def keep(self, seconds: dict, mapping: str) -> None:
        """Write this setting's ``seconds`` and the ``mapping`` chosen from them beside the other settings'."""
        entries = self._entries()
        if entries is None:
            return  # the file holds something else, left as it is (``_entries`` said so)
        # "mode": the key the first tuning files used for the mapping, kept so that old files and new read alike
        entries[self.key] = {"mode": mapping, "seconds": seconds, "setting": self.label,
                             "timed": datetime.datetime.now().isoformat(timespec="seconds")}
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        except OSError as err:
            self._warn(f"cannot write hardware.tuning_file={self.path} ({first_line(err)}); the next run times the "
                       "task mappings again and may pick another; set hardware.tuning_file to a writable file "
                       "or pin hardware.task_parallel")

    def _entries(self) -> Optional[dict]:
        """The file's entries, {} while there is none; None when it holds anything else, so nothing overwrites it."""
        try:
            entries = json.loads(self.path.read_text())
        except (FileNotFoundError, NotADirectoryError):  # nothing remembered yet, or nowhere to (``keep`` says)
            return {}
        except IsADirectoryError:
            problem = "is a folder"
        except OSError as err:
            problem = f"cannot be read ({first_line(err)})"
        except ValueError as err:  # not UTF-8, or not JSON
            problem = f"is not JSON ({first_line(err)})"
        else:
            if isinstance(entries, dict):
                return entries
            problem = "holds JSON other than the object of timings metarun writes"
        self._warn(f"hardware.tuning_file={self.path} {problem}; left as it is, and task_parallel=auto's choice is "
                   "not remembered: move it away or set hardware.tuning_file to another file")
        return None

    def _warn(self, line: str) -> None:
        # recall and keep both read the file: one line per run says what is wrong with it
        if not self.warned:
            print(f"warning: {line}", flush=True)
        self.warned = True


# the dataset keys that change a task's size or where its files are, not how the mappings compare: a setting timed
# with one value serves the others
UNTIMED_KEYS = ("ways", "shots", "queries", "root", "cache_dir")
UNTIMED_HARDWARE = ("jobs_per_gpu",)  # how a sweep shares a GPU, not how a step runs


def for_run(cfg, phase: str, device: torch.device, **extra) -> Optional[RememberedChoice]:
    """The memory of ``cfg``'s ``phase`` (train or eval) with ``extra`` settings, or None with
    ``hardware.tuning_file=null``. ``metarun.mapping.task_parallel.tune`` consults it only when the mapping is
    ``auto``. The dataset's sizes and files are left out of the setting, so another ways, shots or meta-batch size
    reuses its timings."""
    path = OmegaConf.select(cfg, "hardware.tuning_file", default=None)
    if not path:
        return None
    setting = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("algo", "model", "dataset", "hardware")}
    setting["dataset"] = {key: value for key, value in setting["dataset"].items() if key not in UNTIMED_KEYS}
    setting["hardware"] = {key: value for key, value in setting["hardware"].items() if key not in UNTIMED_HARDWARE}
    return RememberedChoice(path, {"phase": phase, **setting, **extra}, device,
                            f"{phase} algo={cfg.algo.name} dataset={cfg.dataset.name}")


def choice_line(mapping: str, choice: dict, memory: Optional[RememberedChoice]) -> str:
    """The console line that reports auto's choice (``metarun.mapping.task_parallel.tune``'s record of it), what it cost
    and where it was remembered from."""
    if choice["why"]:
        return f"hardware.task_parallel=auto: {mapping} ({choice['why']}; not timed)"
    timed = ", ".join(f"{value:.3g} s with {name}" for name, value in choice["seconds"].items())
    line = f"hardware.task_parallel=auto: {mapping} (a step of a few tasks: {timed}; " \
           f"timing took {choice['cost']:.1f} s)"
    if not choice["complete"]:
        line += "; cut short: the budget is 5% of the job's expected time, at most 10 s"
    if memory is not None and memory.recalled:
        line += f"; as timed before on this machine (delete {memory.path} to time again)"
    return line
