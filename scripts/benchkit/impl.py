"""The records the benchmark's parts pass each other: how this run measures (``Options``), one implementation of a
setting (``Impl``), and the error of a peer package that cannot be loaded (``MissingPeer``, raised by
``require``), which becomes a note line instead of a measurement."""

import importlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .flops import MATMUL_SIZE


class MissingPeer(Exception):
    """A peer package that is not installed or not found; the message says how to get it."""


def require(module: str):
    """``import module``, or MissingPeer saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingPeer(f"`import {module}` failed ({err}); pip install -e \".[bench]\"") from err


@dataclass
class Options:
    """How this run measures."""

    device: torch.device
    threads: int  # torch's intra-op threads for the peers
    num_threads: object  # metarun's hardware.num_threads: a count, or auto (sized from the model)
    learn2learn: object  # learn2learn's extracted sdist, or None
    matmul_size: int = MATMUL_SIZE["cpu"]  # the side of the matrices whose product measures the peak
    # the tasks of the job that metarun-auto's mapping is chosen for: a long training run's million races the mappings
    # (``task_parallel.tune``); --quick's meta-batch is too few to time, so a smoke test picks without the race
    job_tasks: int = 10 ** 6

    @property
    def clock(self):
        """The process's CPU time for one CPU thread (it leaves out the time other work on a shared machine holds
        the core), else wall time."""
        return time.process_time if self.device.type == "cpu" and self.num_threads == 1 else time.perf_counter


@dataclass
class Impl:
    """One implementation of a setting: ``backward()`` accumulates the meta-gradient (the mean over the
    meta-batch) into ``params``; ``prepare()`` sets the intra-op threads it runs with (outside the timing);
    ``step``, where given, is its whole training step (metarun's: ``metarun.runner.train.meta_step``); ``workers()``,
    the task workers it runs on, each on the intra-op threads; ``precision``, its ``hardware.precision``."""

    backward: Callable
    params: list
    prepare: Callable
    extra: dict = field(default_factory=dict)
    step: Optional[Callable] = None
    workers: Callable[[], int] = lambda: 1
    precision: str = "fp32"
