"""End to end: `metarun dataset=omniglot` on the real subsets, as a user runs it."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_cli


def folders_split(omniglot_dir, cache) -> list:
    """Meta-train on images_background_small1's alphabets, meta-test on those only small2 has."""
    return [f"dataset.root={omniglot_dir}", f"dataset.cache_dir={cache}", "dataset.split=folders",
            "dataset.train=[images_background_small1.zip]", "dataset.val=[images_background_small2.zip]",
            "dataset.test=[images_background_small2.zip]", "dataset.rotations=true"]


def test_a_run_reads_the_data_folder_only_and_caches_under_paths_cache_dir(omniglot_dir, tmp_path):
    data = tmp_path / "data" / "omniglot"
    data.mkdir(parents=True)
    for subset in ("images_background_small1.zip", "images_background_small2.zip"):
        shutil.copy(omniglot_dir / subset, data / subset)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    env = {key: value for key, value in os.environ.items() if key != "METARUN_CACHE"}
    command = [sys.executable, "-m", "metarun.runner.cli", "algo=fomaml", "dataset=omniglot", "dataset.split=folders",
               f"paths.data_dir={tmp_path / 'data'}", "dataset.train=[images_background_small1.zip]",
               "dataset.val_alphabets=1", "dataset.test=[images_background_small2.zip]", "model.width=8",
               "debug=default", "hardware.num_threads=1", "hardware.task_parallel=loop"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written beside the data
    caches = sorted(p.name for p in (tmp_path / "outputs" / "cache").glob("omniglot-*.store"))
    assert len(caches) == 2 and first.stderr.count("building the dataset cache") == 2
    assert re.search(r"test/acc = \d+\.\d\d ± \d+\.\d\d% \(10 episodes", first.stdout), first.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "building the dataset cache" not in again.stderr


@pytest.mark.parametrize("sizes, message", [
    (["dataset.ways=600"], "dataset.ways=600 exceeds the 544 classes"),
    # evaluation sizes are checked at start-up too, before any training or checkpoint
    (["algo=protonet", "eval.ways=500"], "eval.ways=500 exceeds the 424 classes of the val split"),
])
def test_too_many_ways_is_a_one_line_error_at_start_up(omniglot_dir, omniglot_cache, tmp_path, sizes, message):
    run = run_cli("dataset=omniglot", *folders_split(omniglot_dir, omniglot_cache), *sizes,
                  "hardware=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"metarun: error: {message}")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mode_eval_takes_the_checkpoints_own_options_so_their_keys_can_be_overridden(omniglot_dir, omniglot_cache,
                                                                                     tmp_path):
    # the data moved after training: dataset.root is a key of the checkpoint's dataset (omniglot), not of the
    # default job's (sinusoid), and composes because mode=eval composes the checkpoint's own algo and dataset
    moved = tmp_path / "moved"
    moved.mkdir()
    for subset in ("images_background_small1.zip", "images_background_small2.zip"):
        shutil.copy(omniglot_dir / subset, moved / subset)
    trained = run_cli("algo=protonet", "dataset=omniglot", *folders_split(omniglot_dir, omniglot_cache),
                      "model.width=8", "debug=default", "hardware.num_threads=1", f"hydra.run.dir={tmp_path}/train")
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = f"checkpoint={tmp_path}/train/checkpoints/best.pt"
    done = run_cli("mode=eval", checkpoint, f"dataset.root={moved}", "eval.episodes=10", "hardware.num_threads=1",
                   f"hydra.run.dir={tmp_path}/eval")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"protonet on omniglot .*test/acc = \d+\.\d\d ± \d+\.\d\d% \(10 episodes\)", done.stdout)
    assert f"root: {moved}" in (tmp_path / "eval" / ".hydra" / "config.yaml").read_text()
    # a key of another dataset is refused naming the checkpoint's dataset's keys
    bad = run_cli("mode=eval", checkpoint, "dataset.amplitude=[1,2]", f"hydra.run.dir={tmp_path}/bad")
    assert bad.returncode == 1 and bad.stderr.startswith("metarun: error: dataset.amplitude is not a config key; "
                                                         "dataset has _target_, name, ways, shots, queries"), bad.stderr
    assert "root, download" in bad.stderr and not (tmp_path / "bad").exists()
