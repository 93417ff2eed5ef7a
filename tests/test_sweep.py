"""Sweeps beyond the basic grid: the Optuna preset optimises the returned metric; submitit runs jobs as processes."""

import json
import os
import re
import shlex
import signal
import sys

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from metarun.config import store
from metarun.runner.checkpoint import load_checkpoint
from metarun.utils.resume_hint import pasteable
from tests.conftest import CONF, TINY, run_cli
from tests.docs import doc_command
from tests.test_reliability import SLOW_RUN, steps
from tests.test_resume_hint import start_in_shell

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the sweep extra is not installed")
from tests.test_launcher import job_processes  # noqa: E402  (needs the sweep extra)

PRESETS = sorted(f"hydra/{p.parent.name}={p.stem}" for p in CONF.glob("hydra/*/*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_hydra_preset_composes(preset):
    store.register()
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[preset], return_hydra_config=True)
    group = preset.split("/")[1].split("=")[0]
    assert "_target_" in cfg.hydra[group]


def test_optuna_preset_minimises_the_validation_metric_the_run_returns(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(*doc_command("hydra/sweeper=optuna_tpe"), "hydra.sweeper.n_trials=2", *TINY,
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(runs) == 2
    # trials are named by the parameters Optuna chose, not by the constant overrides beside them
    assert all(re.fullmatch(r"\d_algo\.inner_lr=[\d.e-]+,optim\.lr=[\d.e-]+", p.parent.name)
               for p in sweep.glob("*/results.json")), [p.name for p in sweep.iterdir()]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(r["val/mse"] for r in runs))
    assert set(best.best_params) == {"algo.inner_lr", "optim.lr"}


def test_submitit_local_launcher_runs_each_job_in_its_own_process_and_directory(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(*doc_command("hydra/launcher=local"), *TINY, f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    results = sorted(json.loads(p.read_text())["algo"] for p in sweep.glob("*_algo=*/results.json"))
    assert results == ["fomaml", "fomaml", "maml", "maml"]
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 4


def test_slurm_command_composes_with_the_partition_and_requeue():
    overrides = [arg for arg in doc_command("hydra/launcher=slurm") if arg != "-m" and "," not in arg]
    store.register()
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.additional_parameters.requeue) == ("gpu", 1, True)
    assert launcher.max_num_timeout > 0  # requeued after a timeout, to resume from checkpoints/last.pt


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_run_by_the_basic_launcher_is_one_line_naming_the_sweep_to_continue(tmp_path):
    sweep = tmp_path / "sweep"
    command = shlex.join([sys.executable, "-m", "metarun.runner.cli", "-m", *SLOW_RUN, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    # a logged line, not the file alone: metrics.jsonl is opened before the training loop takes over Ctrl-C, and the
    # jobs run one after the other
    process = start_in_shell(command, lambda: any(steps(p.parent) for p in sweep.glob("*/metrics.jsonl")))
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C
    out, err = process.communicate()
    assert process.returncode == 1 and err.count("\n") == 1, err
    iteration, checkpoint = re.fullmatch(
        r"metarun: error: interrupted \(Ctrl-C\) after iteration (\d+); (.*) holds it; to continue, run the same "
        rf"command with {re.escape(pasteable('hydra.sweep.dir', sweep))} \(resume=auto, the default, picks the "
        r"checkpoint up\)\n", err).groups()
    assert load_checkpoint(checkpoint).iteration == int(iteration)
    # the sweep stopped at its first job
    assert [p.parent.name.split("_")[0] for p in sweep.glob("*/checkpoints")] == ["0"]
    assert not job_processes(sweep)
