"""A sweep job's folder is named by the keys the sweep varies; constant overrides live in its .hydra/overrides.yaml."""

import re

from omegaconf import OmegaConf

from metarun.config.run_names import swept_dirname, swept_name
from tests.conftest import TINY, run_cli

# as the Optuna sweeper starts a trial: its sampled values (full-precision floats), then the constant overrides
OPTUNA_PARAMS = ["algo.inner_lr=tag(log, interval(0.001, 0.5))", "optim.lr=tag(log, interval(1e-4, 1e-2))"]
LONG_PATH = "/data/" + "a-long-folder-name/" * 8 + "miniimagenet"


def test_a_basic_sweep_names_each_job_by_its_swept_values_only(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / ("a-long-folder-name/" * 8 + "cache")
    constant = f"paths.cache_dir={cache}"  # a long constant path, as dataset.root is for an image dataset
    out = run_cli("-m", *TINY, "algo=maml,fomaml", constant, "optim.lr=0.001,0.002", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert [job.name for job in jobs] == ["0_algo=maml,optim.lr=0.001", "1_algo=maml,optim.lr=0.002",
                                          "2_algo=fomaml,optim.lr=0.001", "3_algo=fomaml,optim.lr=0.002"]
    for job in jobs:
        recorded = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        assert constant in recorded and (job / "results.json").is_file()


def test_optuna_trials_are_named_by_the_sweepers_params_not_the_constants():
    trial = ["algo.inner_lr=0.030285251536123456", "optim.lr=0.0026938830193", "debug=default",
             f"dataset.root={LONG_PATH}"]
    arguments = [*OPTUNA_PARAMS, "debug=default", f"dataset.root={LONG_PATH}"]
    assert swept_name(trial, arguments) == "algo.inner_lr=0.030285251536123456,optim.lr=0.0026938830193"


def test_a_too_long_name_keeps_each_swept_value_readable_and_names_distinct():
    arguments = [*OPTUNA_PARAMS, "optim.weight_decay=tag(log, interval(1e-6, 1e-3))", "algo.inner_steps=range(1,6)",
                 "dataset.shots=1,5", "train.meta_batch_size=16,32", f"dataset.root={LONG_PATH}"]

    def trial(lr):
        return ["algo.inner_lr=0.030285251536123456", f"optim.lr={lr}", "optim.weight_decay=1.2345678901234567e-05",
                "algo.inner_steps=5", "dataset.shots=1", "train.meta_batch_size=32", f"dataset.root={LONG_PATH}"]

    first, second = (swept_name(trial(lr), arguments) for lr in ("0.0026938830193001", "0.0026938830193002"))
    assert len(first) <= 120 and first != second
    # keys by their last part, long numbers rounded (exponent kept), short values whole, a hash of the whole name
    assert re.fullmatch(r"inner_lr=0\.0302852\d*,inner_steps=5,shots=1,lr=0\.0026938\d*,weight_decay=1\.2345\d*e-05,"
                        r"meta_batch_size=32~[0-9a-f]{8}", first), first


def test_the_sweeps_saved_arguments_decide_and_another_commands_record_names_every_override(tmp_path):
    saved = {"hydra": {"sweeper": {"params": {"optim.lr": "0.1,0.2"}}, "overrides": {"task": ["algo=maml,fomaml",
                                                                                              "seed=3"]}}}
    OmegaConf.save(saved, tmp_path / "multirun.yaml")
    assert swept_dirname(["optim.lr=0.1", "algo=maml", "seed=3"], str(tmp_path), "_") == "_algo=maml,optim.lr=0.1"
    # a job whose keys the record lacks: the record is another sweep's, so nothing tells constants apart
    assert swept_dirname(["dataset.shots=5", "seed=3"], str(tmp_path), "_") == "_dataset.shots=5,seed=3"
    assert swept_dirname(["seed=3"], str(tmp_path / "no-record")) == "seed=3"
