"""Sweeps beyond the basic grid: the Optuna preset optimises the returned metric; submitit runs jobs as processes."""

import json

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from metarun import config
from tests.conftest import CONF, TINY, run_cli
from tests.docs import doc_command

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the sweep extra is not installed")

PRESETS = sorted(f"hydra/{p.parent.name}={p.stem}" for p in CONF.glob("hydra/*/*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_hydra_preset_composes(preset):
    config.register()
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[preset], return_hydra_config=True)
    group = preset.split("/")[1].split("=")[0]
    assert "_target_" in cfg.hydra[group]


def test_optuna_preset_minimises_the_validation_metric_the_run_returns(tmp_path):
    sweep = tmp_path / "sweep"
    # job directories by number: Optuna's full-precision floats next to the tiny budget's overrides would make
    # "<num>_<overrides>" longer than the 255 characters a file name may have
    out = run_cli(*doc_command("hydra/sweeper=optuna_tpe"), "hydra.sweeper.n_trials=2", *TINY,
                  f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}")
    assert out.returncode == 0, out.stderr
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(runs) == 2
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
    config.register()
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.additional_parameters.requeue) == ("gpu", 1, True)
    assert launcher.max_num_timeout > 0  # requeued after a timeout, to resume from checkpoints/last.pt
