"""Shared fixtures: composing the real config in-process and running the installed CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from metarun import config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose_config(overrides=(), output_dir=None):
    """The composed run config for ``overrides``, writing into ``output_dir`` when given."""
    config.register()
    overrides = list(overrides) + ([f"paths.output_dir={output_dir}"] if output_dir else [])
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_cli(*args, cwd=None, timeout=600):
    """Run ``metarun ARGS`` as a subprocess of this interpreter; return the CompletedProcess."""
    command = [sys.executable, "-m", "metarun.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def small_budget():
    """Overrides that make a sinusoid run take seconds."""
    return ["train.iterations=60", "train.log_every=20", "train.val_every=30", "train.checkpoint_every=30",
            "train.meta_batch_size=4", "eval.episodes=40", "eval.val_episodes=20", "eval.batch_size=20",
            "logger.console=false"]
