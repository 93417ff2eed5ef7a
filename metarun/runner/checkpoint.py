"""The checkpoint format: one typed record (``Checkpoint``) with a format version, written atomically (a kill
mid-write never leaves a broken file behind) and read back from any earlier version; a write or read that fails
names the file and the fix in one line.

Version 1 (metarun up to issue 14) had no ``version`` key; version 2 named ``dataset.episodes_within``
``dataset.within_alphabet``. ``upgrade`` brings their records to the current version.

A checkpoint is someone else's file as often as one's own ("here is my best.pt"), so it is read as torch's
``weights_only`` load reads it: tensors and plain containers only, never a pickle's code. Every record metarun has
written, version 1 included, loads that way; a file that asks for anything else is refused unless the caller
trusts it (``trust_checkpoint=true``, ``load_learner(..., trusted=True)``).
"""

import pickle
import re
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch

from metarun.logging.console import note
from metarun.utils.atomic import atomic_path
from metarun.utils.errors import RunError, first_line, write_error

FORMAT_VERSION = 3
# what every metarun checkpoint holds; a torch file without them is someone else's
REQUIRED = ("params", "config")
# how torch's zip reader and writer report bytes that are not a torch file, or a write that did not land
READER_FAILURE = "PytorchStreamReader"
WRITER_FAILURES = ("PytorchStreamWriter", "inline_container")
# how torch's weights_only unpickler reports what it refused ("Weights only load failed ... GLOBAL posix.system")
UNSAFE_FAILURE = "Weights only load failed"
UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# version 1 named no implementation: its algo.name and dataset.name meant these
V1_TARGETS = {
    "algo": {name: f"metarun.algos.{module}.ALGORITHM" for name, module in
             {"maml": "maml", "fomaml": "maml", "anil": "anil", "metasgd": "metasgd", "reptile": "reptile",
              "protonet": "protonet"}.items()},
    "dataset": {name: f"metarun.data.{name}.DATASET"
                for name in ("sinusoid", "omniglot", "imagefolder", "miniimagenet")},
}


@dataclass
class Checkpoint:
    """Everything a run's checkpoint holds: its training state, enough to rebuild the network without the dataset
    (``metarun.load_learner``), and the resolved config."""

    iteration: int
    params: dict  # the meta-learned tensors
    buffers: dict  # the model's buffers (batch norm's running averages, when kept)
    optimizer: dict
    scheduler: dict
    scaler: dict
    rng: dict  # torch: the global CPU stream; generator: the training stream's; device: its type; cuda: or None
    best: Optional[dict]  # {"value", "iteration"} of the best validation so far
    val: dict  # the last validation's results
    task_parallel: str  # the task mapping training ran with, kept by a resumed run
    # input_shape, output_dim, objective; image sources' normalisation ([mean], [std]) and inverted (ink = 1)
    data: dict
    config: dict  # the resolved run config
    first_loss: Optional[float] = None  # the run's first train loss: train.diverge_factor's yardstick
    version: int = field(default=FORMAT_VERSION)

    def state_dict(self) -> dict:
        """The record as the dict written to disk (no copies of its tensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def upgrade(state: dict) -> dict:
    """A checkpoint dict of any earlier format version as the current version's."""
    version = state.get("version", 1)
    if version == FORMAT_VERSION:
        return state
    state = {**state, "version": FORMAT_VERSION, "config": upgraded_config(state["config"], version)}
    if version == 1:
        # only Omniglot's stores were inverted; earlier still, checkpoints had no scaler, rng device or mapping
        state["data"] = {"inverted": state["config"]["dataset"]["name"] == "omniglot", **state["data"]}
        state.setdefault("scaler", {})
        state.setdefault("task_parallel", "auto")
        state["rng"] = {"device": "cpu" if state["rng"]["cuda"] is None else "cuda", **state["rng"]}
    return state


def upgraded_config(config: dict, version: int) -> dict:
    """A run config that a checkpoint of format ``version`` holds, with the current version's keys: version 1 had
    no ``_target_``; version 2's ``dataset.within_alphabet`` is version 3's ``dataset.episodes_within``, and its
    ``dataset.drawers_apart`` is now Omniglot's only."""
    config = {**config}
    if version == 1:
        for group, targets in V1_TARGETS.items():
            name = config[group]["name"]
            if name not in targets:
                raise RunError(f"a version-1 checkpoint of {group}.name={name}, which version 1 did not have; "
                               "pass a checkpoint metarun wrote")
            config[group] = {"_target_": targets[name], **config[group]}
    if version <= 2:
        dataset = config["dataset"] = {**config["dataset"]}
        if "within_alphabet" in dataset:
            dataset["episodes_within"] = "group" if dataset.pop("within_alphabet") else "split"
        if dataset["name"] != "omniglot" and dataset.pop("drawers_apart", False):
            raise RunError(f"a checkpoint of dataset={dataset['name']} with dataset.drawers_apart=true, which metarun "
                           "now offers for Omniglot only; evaluate it with the metarun version that wrote it")
    return config


class UnsafeCheckpoint(RunError):
    """A checkpoint whose pickle asks for code (a global that no tensor or plain container needs)."""


class CorruptCheckpoint(RunError):
    """A checkpoint file that is truncated, not a torch file, or a torch file that is not a metarun checkpoint."""


def save_checkpoint(path: Path, checkpoint: Checkpoint, run_dir: Optional[Path] = None) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file and an atomic rename.

    Args:
        run_dir: the run directory, named in the error's hint to continue the run.

    Raises:
        RunError: the file cannot be written (read-only folder, no space left); ``path``'s previous version,
            if any, is untouched.
    """
    state = checkpoint.state_dict()
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


def load_checkpoint(path: Path, device: torch.device = torch.device("cpu"), trusted: bool = False) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` of any format version; tensors land on ``device``.

    Args:
        trusted: also load a file whose pickle asks for code (torch's ``weights_only=False``); only for files
            whose author the user trusts.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpoint: ``path`` asks for code and is not ``trusted``; nothing of it ran.
        CorruptCheckpoint: ``path`` is truncated, not a torch file, or a torch file that is not a metarun
            checkpoint.
        RunError: ``path`` is not a regular file, or of a newer format version.
    """
    path = Path(path)
    check_regular_file(path)
    try:
        state = torch.load(path, map_location=device, weights_only=not trusted)
    # the weights_only unpickler reads stray bytes as opcodes until one fails: IndexError, KeyError, ...
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, RuntimeError, LookupError, TypeError) as err:
        if UNSAFE_FAILURE in str(err):
            raise unsafe_error(path, str(err)) from None
        if not is_corrupt(err):
            raise  # a permission or memory problem: the file may be fine
        raise CorruptCheckpoint(f"cannot read checkpoint {path}: it is truncated or not a torch file "
                       f"({err.__class__.__name__}: {first_line(err)[:80]}); pass a run's checkpoints/best.pt or last.pt") from err
    missing = [key for key in REQUIRED if not isinstance(state, dict) or key not in state]
    if missing:
        raise CorruptCheckpoint(f"{path} is a torch file but not a metarun checkpoint (it has no {', '.join(missing)}); "
                       "pass a run's checkpoints/best.pt or last.pt")
    if state.get("version", 1) > FORMAT_VERSION:
        raise RunError(f"{path} has checkpoint format version {state['version']}, newer than this metarun's "
                       f"{FORMAT_VERSION}; upgrade metarun (pip install -U metarun) to read it")
    known = {f.name for f in fields(Checkpoint)}
    # keys of its own that a fork or a user added beside the record's do not shape the run
    return Checkpoint(**{key: value for key, value in upgrade(state).items() if key in known})


def initialise_from(path, model: torch.nn.Module, params: dict, trusted: bool = False) -> None:
    """Copy into ``params`` (and ``model``'s buffers) every tensor that the checkpoint at ``path`` has under the same
    name and shape (``train.init_from``): a backbone another run trained, such as Baseline's pre-training over all
    meta-train classes before episodic training (Chen et al., 2021, Meta-Baseline); a head of another size stays as
    built. Says at start-up what it took and what it left."""
    try:
        saved = load_checkpoint(Path(path), trusted=trusted)
    except FileNotFoundError:
        raise RunError(f"train.init_from={path} does not exist; give the path of a run's checkpoints/best.pt") from None
    taken = [name for name, value in params.items() if name in saved.params and saved.params[name].shape == value.shape]
    if not taken:
        raise RunError(f"train.init_from={path} holds no tensor of this run's network (no name and shape in common); "
                       "give a checkpoint of a run with the same model settings")
    with torch.no_grad():
        for name in taken:
            params[name].copy_(saved.params[name])
        for name, buffer in model.named_buffers():
            if name in saved.buffers and saved.buffers[name].shape == buffer.shape:
                buffer.copy_(saved.buffers[name])
    left = [name for name in params if name not in taken]
    note(f"train.init_from: {len(taken)} of the {len(params)} meta-learned tensors from {path}"
         + (f"; as built: {', '.join(left)}" if left else ""))


def peek_config(path: Path) -> dict:
    """The resolved run config a checkpoint holds, read safely without loading its tensors (memory-mapped).

    Raises:
        what ``check_regular_file`` raises, else whatever ``torch.load`` raises for a foreign or unsafe file
        (``load_checkpoint`` says which in one line).
    """
    check_regular_file(Path(path))  # a FIFO would block the read
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return upgraded_config(saved["config"], saved.get("version", 1))


def check_regular_file(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file (a FIFO or a device would block or stream forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a run's checkpoints/last.pt") from None
    if stat.S_ISDIR(mode):
        raise RunError(f"checkpoint {path} is a folder; pass a checkpoint file in it, e.g. {path}/checkpoints/best.pt")
    if not stat.S_ISREG(mode):
        raise RunError(f"checkpoint {path} is not a regular file (a FIFO, socket or device); pass a run's "
                       "checkpoints/best.pt or last.pt")


def unsafe_error(path: Path, report: str) -> UnsafeCheckpoint:
    """The line refusing ``path``, whose safe load failed with torch's ``report`` (naming the global it asked for)."""
    asked = UNSAFE_GLOBAL.search(report)
    what = f"it asks the unpickler for {asked.group(1)}" if asked else "it holds more than tensors and plain containers"
    return UnsafeCheckpoint(
        f"checkpoint {path} would run code when loaded ({what}, which no metarun checkpoint holds), so it was not "
        "loaded; if you trust the file and its author, pass trust_checkpoint=true (load_learner(..., trusted=True))")


def is_corrupt(err: Exception) -> bool:
    """Whether ``torch.load``'s ``err`` says the bytes are not a torch file (truncated, text, foreign)."""
    if isinstance(err, RuntimeError):
        return READER_FAILURE in str(err)
    return not isinstance(err, PermissionError)


def restore_buffers(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's buffers (batch-norm running averages, when kept) into ``model``."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(checkpoint.buffers[name])
