"""The notebook API: ``metarun.run([...])`` runs one job as the ``metarun`` command does and returns its ``Results``.

The run config is composed by Hydra's compose API from ``metarun.conf`` with the command's schemas and checks, so
an override that the command refuses raises here with the command's one line (without its ``metarun: error:``
prefix). The job runs in a new run directory named as the command names it (``hydra.run.dir``: under
``outputs/runs/`` of the working folder, the date to the second and the overrides; ``~2`` after it where a call
in the same second took that name), or in ``output_dir`` (or ``hydra.run.dir=...``), where ``resume=auto``
continues a run left there.

What a call changes in the process: it restores, when it returns or raises, torch's intra-op thread count (a
small model trains on one thread), the global random streams (Python's, NumPy's, torch's CPU generator and, where
CUDA is initialised before the call, CUDA's), torch's deterministic-algorithms and TF32 flags, the console
progress switch (``logger.console``) and Hydra's global state (its initialisation, a caller's own included,
job name, version base and ``HydraConfig``). It leaves
what a second call reuses: metarun's OmegaConf resolvers and schemas registered (``metarun.config.store.register``),
the modules imported (torch among them), CUDA initialised where the run used a GPU, and
``hardware.task_parallel=auto``'s timings remembered in the cache folder (``paths.cache_dir``). It does not put
the working folder on ``sys.path`` as the command does: your own ``_target_`` module must be importable (in a
notebook, the notebook's folder is).
"""

import itertools
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobRuntime
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.version import VersionBase
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from metarun.config import store
from metarun.logging import console
from metarun.logging.table import CI_SUFFIX, metric_text
from metarun.report import frame
from metarun.report.runs import read_run
from metarun.runner.cli import composition_error, run_job
from metarun.runner.evaluate import with_own_groups
from metarun.runner.run_dir import RunFolders, make_folder
from metarun.utils.allocator import use_huge_pages
from metarun.utils.errors import RunError, StartRefused


@dataclass
class Results:
    """A finished run: its final results (results.json), its run directory and its logged metrics (metrics.jsonl)."""

    metrics: dict  # results.json: test/<metric> with its _ci95 first, then the last validation, best, ...
    run_dir: Path
    history: list = field(default_factory=list)  # metrics.jsonl's rows: {"step": ..., "train/loss": ..., ...}

    @classmethod
    def read(cls, run_dir: Path) -> "Results":
        """The results of the finished run in ``run_dir``.

        Raises:
            RunError: its results.json or metrics.jsonl cannot be read.
        """
        run = read_run(Path(run_dir))
        if run is None or run.results is None:
            raise RunError(f"{run_dir} holds no readable results.json (see the warning above)")
        return cls(run.results, Path(run_dir), run.history)

    def history_frame(self):
        """``history`` as a pandas DataFrame, one row per logged step.

        Raises:
            ImportError: pandas is not installed.
        """
        return frame(self.history)

    def __repr__(self) -> str:
        """The test score line: ``Results(maml on sinusoid: test/mse = 0.3 ± 0.05 (10 episodes) → RUN_DIR)``."""
        metrics = self.metrics
        key = next((k for k in metrics if k.startswith("test/") and k + CI_SUFFIX in metrics), None)
        score = f"{key} = {metric_text(key, metrics[key], metrics[key + CI_SUFFIX])} " \
                f"({metrics.get('test/episodes')} episodes)" if key else "no test metric"
        return f"Results({metrics.get('algo')} on {metrics.get('dataset')}: {score} → {self.run_dir})"


def run(overrides: Sequence[str] = (), output_dir: Optional[Union[str, Path]] = None) -> Results:
    """Run one metarun job with the command line's ``overrides``, as ``metarun OVERRIDES`` does, and return its results.

    Args:
        overrides: ``key=value`` and ``group=option`` strings, e.g. ``["algo=fomaml", "debug=default"]``;
            ``mode=eval checkpoint=PATH`` re-evaluates a checkpoint. A sweep (``-m``) is the command's.
        output_dir: the run directory (where ``resume=auto`` continues a run left in it); default: a new folder
            under ``outputs/runs/`` of the working folder, named from the date and the overrides.

    Returns:
        The run's ``Results``.

    Raises:
        ValueError, FileNotFoundError, RunError: what the command reports in one line, with its message (a
            misspelt key, a value out of range, missing data, a run directory in use, ...).
    """
    overrides = checked_overrides(overrides)
    use_huge_pages()
    with metarun_hydra(), kept_process_state():
        cfg = compose_run(overrides, output_dir)
        HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} and the .hydra/ record read it
        task_overrides = list(cfg.hydra.overrides.task)
        with open_dict(cfg):
            del cfg["hydra"]  # the job's config, as Hydra hands it to the command's job
        run_dir = Path(cfg.paths.output_dir)
        job(cfg, run_dir, task_overrides, "hydra.run.dir" if output_dir is None else "output_dir")
    return Results.read(run_dir)


def checked_overrides(overrides: Sequence[str]) -> list:
    """``overrides`` as a list, with the checkpoint's own groups first for ``mode=eval`` (as the command does).

    Raises:
        TypeError: one string instead of a list.
        ValueError: a flag (``-m``, ``--cfg``): the command's.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides is a list of key=value strings, e.g. {overrides.split()}, not one string")
    overrides = list(overrides)
    flags = [arg for arg in overrides if arg.startswith("-")]
    if flags:
        raise ValueError(f"{flags[0]}: metarun.run takes overrides (key=value) only; run a sweep (-m) with the "
                         "metarun command, and read its runs with metarun.report.load_runs")
    if any(arg.startswith("mode=") for arg in overrides):
        return with_own_groups(overrides)
    return overrides


def compose_run(overrides: list, output_dir) -> DictConfig:
    """The command's config for ``overrides`` with Hydra's node, whose ``runtime.output_dir`` is the run directory:
    ``output_dir``, else ``hydra.run.dir`` (a new folder: ``unused``).

    Raises:
        ValueError: the overrides do not compose; the command's one line.
    """
    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        chosen = output_dir is not None or any(o.startswith("hydra.run.dir=") for o in cfg.hydra.overrides.hydra)
        run_dir = Path(output_dir) if output_dir is not None else Path(cfg.hydra.run.dir)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.RUN
            cfg.hydra.runtime.output_dir = str((run_dir if chosen else unused(run_dir)).absolute())
    except (CompactHydraException, OmegaConfBaseException) as err:
        raise ValueError(composition_error(err)) from None
    return cfg


def unused(path: Path) -> Path:
    """``path``, or where it exists, ``path~2``, ``path~3``, ...: the first that does not.

    The command's run directory is named to the second, and a call can take less than one: a second call within
    it would otherwise continue the first call's run (``resume=auto``), or refuse to where ``seed``, which names
    no folder, differs.
    """
    candidates = itertools.chain([path], (path.with_name(f"{path.name}~{number}") for number in itertools.count(2)))
    return next(candidate for candidate in candidates if not candidate.exists())


def job(cfg: DictConfig, run_dir: Path, overrides: list, named_by: str) -> None:
    """The command's job (``metarun.runner.cli.run_job``) with ``overrides`` in ``run_dir`` (set by the argument
    ``named_by``), raising what the command reports."""
    try:
        RunFolders.made = make_folder(run_dir, named_by)  # as the command's callback does, for discard_unstarted
    except StartRefused as err:  # a BaseException in the command, where Hydra would swallow an Exception
        raise RunError(str(err)) from None
    run_job(cfg, overrides)


@contextmanager
def metarun_hydra() -> Iterator[None]:
    """Hydra initialised on ``metarun.conf`` as the command initialises it, for the block; Hydra's global state as
    found (a caller's own initialisation, job name, version base, ``HydraConfig``) is back after it."""
    store.register()
    hydra, job_name = GlobalHydra.instance().hydra, JobRuntime.instance().get("name")
    base, hydra_cfg = VersionBase.instance().getbase(), HydraConfig.instance().cfg
    GlobalHydra.instance().clear()  # initialize_config_module refuses to start over a caller's own
    try:
        with initialize_config_module(config_module="metarun.conf", version_base="1.3", job_name="cli"):
            yield
    finally:
        GlobalHydra.instance().clear()
        if hydra is not None:
            GlobalHydra.instance().initialize(hydra)
        JobRuntime.instance().set("name", job_name)
        VersionBase.instance().version_base = base  # setbase() refuses the unset marker it may hold
        HydraConfig.instance().cfg = hydra_cfg


@contextmanager
def kept_process_state() -> Iterator[None]:
    """Restore torch's threads, flags and random streams, Python's and NumPy's, and the console progress switch,
    which a run sets for the whole process, when the block ends."""
    threads, progress = torch.get_num_threads(), console.progress_shown()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    python_random, numpy_random = random.getstate(), np.random.get_state()
    # CUDA's streams only where CUDA runs already: reading them would initialise it for a CPU run
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        torch.set_num_threads(threads)
        console.show_progress(progress)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        random.setstate(python_random)
        np.random.set_state(numpy_random)
