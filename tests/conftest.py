"""Shared fixtures: composing the real config in-process and running the installed CLI."""

import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from metarun.config import store
from tests import cli_process

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose_config(overrides=(), output_dir=None):
    """The composed run config for ``overrides``, writing into ``output_dir`` when given."""
    store.register()
    overrides = list(overrides) + ([f"paths.output_dir={output_dir}"] if output_dir else [])
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def load_script(path: Path, name: str):
    """The Python file at ``path`` (a script or example outside the package) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args, cwd=None):
    """Run ``metarun ARGS`` in a process of its own, forked with its imports done (``tests.cli_process``); return
    the CompletedProcess (no time limit: a slow machine makes a test slow, never failed)."""
    return cli_process.run(list(args), cwd=cwd)


@pytest.fixture
def small_budget():
    """Overrides that make a sinusoid run take seconds."""
    return ["train.iterations=60", "train.log_every=20", "train.val_every=30", "train.checkpoint_every=30",
            "train.meta_batch_size=4", "eval.episodes=40", "eval.val_episodes=20", "eval.batch_size=20",
            "logger.console=false"]


def tiny_checkpoint(**fields):
    """A ``Checkpoint`` record of one parameter, for tests of the file handling; ``fields`` replace its values."""
    from metarun.runner.checkpoint import Checkpoint

    record = dict(iteration=7, params={"w": torch.arange(3.0)}, buffers={}, optimizer={}, scheduler={}, scaler={},
                  rng={"torch": None, "generator": None, "device": "cpu", "cuda": None}, best=None, val={},
                  task_parallel="loop", data={}, config={"seed": 0})
    return Checkpoint(**{**record, **fields})


# one thread: on a busy 2-core machine torch's default two threads make a tiny run 10x slower, not faster
TINY = ["debug=default", "logger.console=false", "hardware.num_threads=1"]


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """No API key, no netrc login, wandb's own files under tmp: wandb must fall back to offline, never prompt."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


# torch's intra-op threads for a test: a fresh process's, shared among the xdist workers that run side by side (two
# workers of two threads each on two cores would make every tiny computation wait for the other's), as
# hardware.available_cores shares them among a local sweep's jobs
THREADS = max(1, torch.get_num_threads() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def process_defaults() -> None:
    """torch's process-wide settings as a fresh process has them, the random streams seeded."""
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(False)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def same_start_whatever_ran_before():
    """Each test starts from a fresh process's state, whichever tests its worker ran before (a model initialised
    from the global random stream, or timed on the threads a run left, would otherwise depend on the test order),
    and leaves it so for the module fixtures that come next."""
    process_defaults()
    yield
    process_defaults()


@pytest.fixture(autouse=True)
def own_tuning_file(tmp_path_factory, monkeypatch):
    """Each test remembers task_parallel=auto's choices in a file of its own (subprocesses inherit it), never in
    the user's ~/.cache: a choice one test timed must not decide another's."""
    monkeypatch.setenv("METARUN_CACHE", str(tmp_path_factory.mktemp("metarun-cache")))
