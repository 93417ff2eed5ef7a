"""The installed command line: help, composed config, clear errors, and a real end-to-end run."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.algos.objectives import OBJECTIVES
from metarun.data import build_tasks
from metarun.models import build_model
from metarun.models.network import functional_forward
from metarun.runner.evaluate import evaluate
from metarun.utils import hardware
from tests.conftest import TINY, run_cli


def test_help_lists_the_config_groups_and_every_key_with_its_meaning():
    out = run_cli("--help")
    assert out.returncode == 0
    groups = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line and "=" not in line)
    expected = {"algo": {"maml", "fomaml", "mamlpp", "anil", "metasgd", "reptile", "protonet"},
                "dataset": {"sinusoid", "omniglot", "miniimagenet", "imagefolder"},
                "model": {"mlp", "conv4", "resnet12"}, "hardware": {"auto", "cpu", "gpu", "ddp"},
                "logger": {"local", "none"}, "debug": {"default"}, "hydra/sweeper": {"basic", "optuna_tpe"},
                "hydra/launcher": {"basic", "local", "slurm"}}
    for group, options in expected.items():
        assert options <= set(groups[group].split(", ")), group
    assert "schema/" not in out.stdout  # the typed schemas are not options to pick
    keys = {line.split(" = ")[0]: line for line in out.stdout.splitlines() if " = " in line}
    composed = OmegaConf.to_container(OmegaConf.create(run_cli("--cfg", "job").stdout))
    assert set(keys) == set(flat_keys(composed))
    assert "# outer (meta) updates" in keys["train.iterations"] and keys["train.iterations"].startswith("train.iterations = 2000 ")
    assert "# classes per task (N)" in run_cli("dataset=omniglot", "--help").stdout  # the help of that config


def flat_keys(node: dict, prefix: str = "") -> list:
    """The dotted keys of the leaves of ``node``."""
    return [leaf for key, value in node.items()
            for leaf in (flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


def test_a_refused_command_leaves_no_run_directory_and_a_run_no_empty_log(tmp_path):
    refused = run_cli("algo.inner_lr=-1", cwd=tmp_path)
    assert refused.returncode == 1 and list(tmp_path.iterdir()) == []  # no empty outputs/runs/ either
    (tmp_path / "outputs" / "runs").mkdir(parents=True)  # folders that were there stay
    assert run_cli("algo.inner_lr=-1", cwd=tmp_path).returncode == 1 and (tmp_path / "outputs" / "runs").is_dir()
    done = run_cli("debug=default", "hardware.num_threads=1", "logger.console=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run_dir / "results.json").is_file() and not (run_dir / "cli.log").exists()
    # a sweep's refused job: tests/test_reliability.py


@pytest.mark.parametrize("key, sweep", [("hydra.run.dir", []), ("hydra.sweep.dir", ["-m", "seed=1,2"])])
def test_a_run_directory_that_cannot_be_made_is_one_line_naming_the_key(tmp_path, key, sweep):
    (tmp_path / "notes").write_text("a file, not a folder")
    done = run_cli(*sweep, *TINY, f"{key}={tmp_path}/notes/run")
    assert done.returncode == 1 and done.stderr == (
        f"metarun: error: cannot create the run directory {tmp_path}/notes/run ({tmp_path}/notes is a file, not a "
        f"folder); set {key} to a folder this process can write\n")


def test_a_run_without_overrides_is_named_by_its_date_alone():
    hydra = OmegaConf.create(run_cli("--cfg", "hydra", "--resolve").stdout).hydra
    assert re.fullmatch(r"outputs/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", hydra.run.dir), hydra.run.dir
    named = OmegaConf.create(run_cli("algo=fomaml", "--cfg", "hydra", "--resolve").stdout).hydra
    assert re.fullmatch(r"outputs/runs/[0-9_-]{19}_algo=fomaml", named.run.dir), named.run.dir


def test_cfg_job_prints_the_composed_config():
    out = run_cli("algo=fomaml", "--cfg", "job")
    cfg = OmegaConf.create(out.stdout)
    assert out.returncode == 0 and cfg.algo.first_order is True and cfg.dataset.name == "sinusoid"


@pytest.mark.parametrize("args, expected", [
    (["algo=foo"], ["Could not find 'algo/foo'", "fomaml", "maml"]),
    (["dataset=nope"], ["Could not find 'dataset/nope'", "sinusoid"]),
    (["algo.inner_lrr=0.1"], ["algo.inner_lrr is not a config key; did you mean algo.inner_lr? algo has _target_, name, inner_lr"]),
    # the + form adds a key Hydra does not check: the schema refuses it all the same
    (["+algo.inner_lrr=0.1"], ["algo.inner_lrr is not a config key; did you mean algo.inner_lr?"]),
    (["train.iteratons=5"], ["train.iteratons is not a config key; did you mean train.iterations?"]),
    # a key an earlier release had names the setting that replaced it
    (["dataset=omniglot", "dataset.within_alphabet=true"],
     ["dataset.within_alphabet is now dataset.episodes_within=group (false: episodes_within=split)"]),
    (["algo.inner_steps=abc"], ["Value 'abc' of type 'str' could not be converted to Integer", "full_key: algo.inner_steps"]),
    (["hardware.num_threads=-1"], ["hardware.num_threads=-1 is not auto or a positive integer"]),
    (["dataset=imagefolder"], ["dataset.train, dataset.val, dataset.test have no value; set dataset.train=... dataset.val=..."]),
])
def test_bad_composition_fails_with_one_line_naming_the_problem(args, expected, tmp_path):
    out = run_cli(*args, f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("metarun: error: "), out.stderr
    for text in expected:
        assert text in out.stderr
    assert "+algo" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr  # no advice to add the typo
    assert not (tmp_path / "run" / "results.json").exists()


def test_non_positive_inner_lr_is_a_one_line_error(tmp_path):
    out = run_cli("algo.inner_lr=-1", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    assert out.stderr.strip() == "metarun: error: algo.inner_lr must be > 0, got -1.0; set e.g. algo.inner_lr=0.01"


def _mse_after_adaptation(cfg, params, model, source):
    objective = OBJECTIVES[source.objective]
    forward = functional_forward(model)
    task = lambda p, *t: maml.evaluate_task(forward, p, *t, cfg.algo, objective)  # noqa: E731
    return evaluate(task, params, source, "test", cfg.eval.episodes, cfg.eval, "vmap", "mse")["test/mse"]


def test_end_to_end_sinusoid_run_beats_adaptation_from_random_init(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("algo=maml", "dataset=sinusoid", "train.iterations=1000", "train.log_every=250",
                  "train.val_every=500", "eval.episodes=200", "hardware.num_threads=1", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("test/mse", "test/mse_ci95", "val/mse", "algo", "dataset", "iterations", "wall_s", "seed"):
        assert key in results
    assert (results["algo"], results["dataset"], results["iterations"]) == ("maml", "sinusoid", 1000)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert "test/mse = " in out.stdout

    # the same adaptation from a random initialisation, on the same fixed test episodes
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    device = hardware.configure(cfg.hardware, cfg.seed)
    source = build_tasks(cfg.dataset, device)
    model = build_model(cfg.model, source.input_shape, source.output_dim)
    random_mse = _mse_after_adaptation(cfg, dict(model.named_parameters()), model, source)
    # the meta-test scores the best-validation checkpoint
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    trained_mse = _mse_after_adaptation(cfg, checkpoint["params"], model, source)
    assert trained_mse == pytest.approx(results["test/mse"], rel=1e-5)
    assert results["test/mse"] < 0.5 * random_mse


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown where no GPU exists")
def test_gpu_hardware_without_a_gpu_is_a_one_line_error(tmp_path):
    out = run_cli("hardware=gpu", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    assert out.stderr.strip() == ("metarun: error: hardware.device=cuda but no CUDA device is visible; "
                                  "use hardware=cpu or hardware=auto")


def test_flagship_command_without_omniglot_files_fails_in_one_line(tmp_path):
    # a closed local proxy makes the download fail at once, online or not, and keeps the test offline
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "metarun.runner.cli", "algo=maml", "dataset=omniglot",
                          f"paths.data_dir={tmp_path}/data", f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("metarun: error: cannot download images_background.zip")
    assert f"put it at {tmp_path}/data/omniglot/images_background.zip" in line
    assert not list((tmp_path / "data").rglob("*.zip*")) and not (tmp_path / "run" / "results.json").exists()
