"""End to end: `metarun algo=fomaml dataset=omniglot` on the real subsets, as a user runs it."""

import json
import subprocess
import sys

import pytest


def metarun(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarun.cli", *overrides], capture_output=True, text=True, timeout=timeout)


def folders_split(omniglot_dir, cache) -> list:
    """Meta-train on images_background_small1's alphabets, meta-test on those only small2 has."""
    return [f"dataset.root={omniglot_dir}", f"dataset.cache_dir={cache}", "dataset.split=folders",
            "dataset.train=[images_background_small1.zip]", "dataset.val=[images_background_small2.zip]",
            "dataset.test=[images_background_small2.zip]", "dataset.rotations=true"]


@pytest.mark.slow
def test_fomaml_learns_omniglot_from_the_cli(omniglot_dir, tmp_path):
    # a small budget: MAML's Omniglot net (stride-2 convs, here 32 wide), its inner lr 0.4 and 3 test steps
    run = metarun("algo=fomaml", "dataset=omniglot", *folders_split(omniglot_dir, tmp_path / "cache"),
                  "dataset.queries=1", "model.width=32", "model.max_pool=false", "algo.inner_lr=0.4",
                  "algo.test_inner_steps=3", "train.iterations=150", "train.meta_batch_size=4", "train.log_every=50",
                  "train.val_every=150", "eval.episodes=50", "eval.val_episodes=10", "eval.queries=5", "hardware=cpu",
                  "hardware.num_threads=1",  # one thread: on a shared CPU, spinning OpenMP threads cost 10x
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"] == "omniglot" and results["iterations"] == 150
    assert results["test/acc"] > 0.3, results  # chance is 0.2
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("sizes, message", [
    (["dataset.ways=600"], "dataset.ways=600 exceeds the 544 classes"),
    # evaluation sizes are checked at start-up too, before any training or checkpoint
    (["algo=protonet", "eval.ways=500"], "eval.ways=500 exceeds the 424 classes of the val split"),
])
def test_too_many_ways_is_a_one_line_error_at_start_up(omniglot_dir, tmp_path, sizes, message):
    run = metarun("dataset=omniglot", *folders_split(omniglot_dir, tmp_path / "cache"), *sizes,
                  "hardware=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"metarun: error: {message}")
    assert not (tmp_path / "run" / "checkpoints").exists()
