"""End to end: `metarun dataset=metadataset` on tiny sources written in the official format (tests/data/
metadataset_fixture.py): multi-source training, the per-source meta-test table, eval.sources, damaged records, and
Meta-Dataset's variable episodes on the other image datasets (dataset.episodes=variable)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarun.data.omniglot import build as build_omniglot
from metarun.data.tasks import PAD
from metarun.learner import load_learner
from tests.conftest import run_cli
from tests.data.metadataset_fixture import class_images, write_sources
from tests.test_readme import _dataset_commands

SMALL = ["model.width=8", "debug=default", "hardware.num_threads=1", "hardware.task_parallel=loop",
         # the fixture's alphabets hold 3 characters and its splits 5-9 classes: Meta-Dataset's bounds scaled down
         "dataset.variable.min_ways=2", "dataset.variable.max_ways=5", "dataset.variable.max_support=20"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A records root holding aircraft (flat), omniglot (alphabets) and ilsvrc_2012 (a WordNet-style DAG)."""
    root = tmp_path_factory.mktemp("metadataset")
    write_sources(root)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache folder for the module's runs: each source's splits are decoded once."""
    return tmp_path_factory.mktemp("metadataset-cache")


def metadataset_run(root: Path, cache: Path, tmp_path: Path, *extra):
    return run_cli("dataset=metadataset", f"dataset.root={root}", f"dataset.cache_dir={cache}",
                   f"hydra.run.dir={tmp_path / 'run'}", "dataset.sources=[ilsvrc_2012,omniglot,aircraft]", *SMALL, *extra)


def readme_command() -> list:
    """The Datasets page's Meta-Dataset command without its dataset.root (each run gives the fixture's)."""
    return [arg for arg in _dataset_commands()["metadataset"] if not arg.startswith(("dataset=", "dataset.root="))]


@pytest.mark.parametrize("algo", [readme_command(), ["algo=fomaml", "algo.head_init=prototypes", "algo.inner_lr=0.1",
                                                     "algo.test_inner_steps=1", "train.iterations=10"]],
                         ids=["the-readme-s-protonet", "fo-proto-maml"])
def test_a_multi_source_run_trains_on_every_source_and_reports_each_test_source(sources, cache, tmp_path, algo):
    done = metadataset_run(sources, cache, tmp_path, *algo)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test/sources"] == ["ilsvrc_2012", "omniglot", "aircraft"]
    accuracies = [results[f"test/{name}/acc"] for name in results["test/sources"]]
    assert results["test/acc"] == pytest.approx(sum(accuracies) / 3)
    # chance is at most 1/2 (2-5 ways); the fixture's classes are patterns a few iterations tell apart
    assert min(accuracies) > 0.6, results
    table = done.stdout[done.stdout.index("source"):]
    for name in ("ilsvrc_2012", "omniglot", "aircraft", "average"):
        assert f"\n{name}" in table, done.stdout
    assert all(f"val/{name}/acc" in results for name in ("ilsvrc_2012", "omniglot", "aircraft"))
    with np.load(tmp_path / "run" / "test_episodes.npz") as data:  # every source's episodes, for --paired
        assert len(data["metric"]) == 3 * 10
    # few-shot inference: a head of dataset.variable.max_ways (5) outputs adapts to a 3-way task of new images
    learner = load_learner(tmp_path / "run" / "checkpoints" / "best.pt")
    images = [class_images(class_id, 3, 20, seed=7) for class_id in (1, 4, 6)]
    adapted = learner.adapt([image for images_of in images for image in images_of[:2]], ["a", "a", "b", "b", "c", "c"])
    assert adapted.logits([images[0][2], images[2][2]]).shape == (2, 3)
    assert adapted.predict([images[0][2], images[1][2], images[2][2]]) == ["a", "b", "c"]


def test_eval_sources_picks_the_test_sources_and_a_source_without_test_classes_is_one_line(sources, cache, tmp_path):
    done = metadataset_run(sources, cache, tmp_path, "algo=protonet", "eval.sources=[aircraft]", "train.iterations=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test/sources"] == ["aircraft"]
    refused = metadataset_run(sources, cache, tmp_path / "b", "algo=protonet", "eval.sources=[aircraft,mscoco]")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "metarun: error: eval.sources=['aircraft', 'mscoco'] names mscoco, which dataset.root has no test classes of; "
        "list some of ilsvrc_2012, omniglot, aircraft")


def test_a_damaged_record_is_one_line_naming_the_file_and_no_cache_is_left(sources, tmp_path):
    root = tmp_path / "root"
    write_sources(root)
    damaged = root / "aircraft" / "0.tfrecords"
    data = bytearray(damaged.read_bytes())
    data[40] ^= 0xFF  # inside the first record's image bytes: its data CRC no longer matches
    damaged.write_bytes(bytes(data))
    done = metadataset_run(root, tmp_path / "cache", tmp_path, "algo=protonet")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("metarun: error: ") and str(damaged) in last and "record 0" in last, done.stderr[-2000:]
    assert not any(p.name.startswith("metadataset-aircraft-train") for p in (tmp_path / "cache").iterdir())


def test_a_missing_source_folder_names_it_and_the_fix(sources, tmp_path):
    done = run_cli("dataset=metadataset", f"dataset.root={sources}", "dataset.sources=[ilsvrc_2012,dtd]",
                   f"hydra.run.dir={tmp_path / 'run'}", f"dataset.cache_dir={tmp_path / 'cache'}", *SMALL)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"metarun: error: Meta-Dataset source dtd is not in {sources}: expected {sources / 'dtd'}/ with "
        "dataset_spec.json and its .tfrecords; convert it with the official scripts, or leave it out of dataset.sources")


def test_variable_episodes_on_omniglot_draw_each_episode_within_one_alphabet(omniglot_cfg, folders_cfg):
    cfg = omniglot_cfg(**folders_cfg, episodes="variable", episodes_within="group", rotations=False)
    tasks = build_omniglot(cfg, torch.device("cpu"))
    sampler, store = tasks.samplers["train"], tasks.samplers["train"].store
    batch = tasks.sample(16, torch.Generator().manual_seed(0))
    assert batch.padded and tasks.output_dim == cfg.variable.max_ways
    for index in range(batch.num_tasks):
        sx, sy, qx, qy = batch.task(index)
        ways = int(sy.max()) + 1
        assert cfg.variable.min_ways <= ways <= cfg.variable.max_ways
        assert set(sy.tolist()) == set(qy.tolist()) == set(range(ways))
        assert PAD not in sy.tolist() and len(qy) == ways * (len(qy) // ways)  # the same queries for every class
    # every episode's characters come from one alphabet: match its support images back to their classes
    rows = {bytes(store.images[r].numpy()): c for c in range(store.num_classes)
            for r in range(int(store.offsets[c]), int(store.offsets[c + 1]))}
    for index in range(batch.num_tasks):
        sx = batch.task(index)[0]
        pixels = ((sx + sampler.shift) / sampler.scale).round().to(torch.uint8)  # the stored images, unnormalised
        classes = {rows[bytes(image.numpy())] for image in pixels}
        alphabets = {store.class_names[c].split("/")[0] for c in classes}
        assert len(alphabets) == 1, alphabets


def test_eval_sizes_with_variable_episodes_are_one_line(omniglot_cfg, folders_cfg, tmp_path):
    done = run_cli("dataset=omniglot", f"dataset.root={omniglot_cfg().root}", f"dataset.cache_dir={omniglot_cfg().cache_dir}",
                   "dataset.split=folders", "dataset.train=[images_background_small1.zip]", "dataset.val_alphabets=1",
                   "dataset.test=[images_background_small2.zip]", "dataset.episodes=variable", "eval.ways=5",
                   f"hydra.run.dir={tmp_path}", *SMALL[:4])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "metarun: error: eval.ways=5 sets the size of fixed episodes, but dataset.episodes=variable draws each "
        "episode's own (dataset.variable.*); set it to null")


def test_mode_eval_re_evaluates_a_checkpoint_source_by_source(sources, cache, tmp_path):
    trained = metadataset_run(sources, cache, tmp_path, "algo=protonet", "train.iterations=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    done = run_cli("mode=eval", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", "eval.sources=[omniglot]",
                   "eval.episodes=5", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["test/sources"] == ["omniglot"] and "test/omniglot/acc" in results
    assert "(5 episodes per source)" in done.stdout and "\nomniglot" in done.stdout, done.stdout
