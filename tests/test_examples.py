"""examples/own_algorithm: a user's own algorithm and dataset, run through the real CLI from a copy of their folder
as its README says (train, mode=eval, resume, load_learner), and their settings' errors in one line."""

import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import REPO, TINY, run_cli

EXAMPLE = REPO / "examples" / "own_algorithm"
# the command of docs/own_algorithm.md and the example's README, with a budget measured against its margin: 100
# iterations reach about 60% (chance 20%)
COMMAND = ["hydra.searchpath=[file://conf]", "algo=my_algo", "dataset=my_data", "model=conv4", "model.width=32",
           "model.max_pool=false", *TINY, "train.iterations=100", "train.val_every=50", "train.checkpoint_every=50",
           "eval.episodes=50", "eval.batch_size=50"]


def test_the_readmes_train_with_the_command_tested_here():
    for readme in (REPO / "docs" / "own_algorithm.md", EXAMPLE / "README.md"):
        line = next(line for line in re.findall(r"^metarun .*$", readme.read_text(), re.M) if "algo=my_algo" in line)
        assert COMMAND[: len(shlex.split(line)) - 1] == shlex.split(line)[1:], readme


def own_folder(tmp_path):
    """A copy of the example folder, so that runs write into tmp and never into the repository."""
    return shutil.copytree(EXAMPLE, tmp_path / "own_algorithm", ignore=shutil.ignore_patterns("__pycache__", "outputs"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The example folder after the README's training command: (folder, its run directory)."""
    folder = own_folder(tmp_path_factory.mktemp("example"))
    out = run_cli(*COMMAND, "hydra.run.dir=run", cwd=folder)
    assert out.returncode == 0, out.stderr
    return folder, folder / "run"


def test_own_algorithm_and_dataset_train_from_their_folder(trained):
    _, run_dir = trained
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["algo"], results["dataset"]) == ("my_algo", "my_data")
    assert results["test/acc"] > 0.4, results  # chance is 0.2; 100 iterations reach about 0.6
    params = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)["params"]
    assert params["meta/scale"].item() != 10.0  # the temperature was meta-learned


def test_mode_eval_and_resume_of_the_own_run(trained):
    folder, run_dir = trained
    tested = run_cli("mode=eval", "checkpoint=run/checkpoints/best.pt", "hydra.run.dir=eval", *TINY[1:],
                     "eval.episodes=50", "eval.batch_size=50", cwd=folder)
    assert tested.returncode == 0, tested.stderr
    trained_acc = json.loads((run_dir / "results.json").read_text())["test/acc"]
    assert json.loads((folder / "eval" / "results.json").read_text())["test/acc"] == pytest.approx(trained_acc)
    resumed = run_cli(*COMMAND, "hydra.run.dir=run", "resume=true", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "results.json").read_text())["test/acc"] == pytest.approx(trained_acc)


def test_load_learner_adapts_the_own_checkpoint_on_raw_images(trained, monkeypatch):
    folder, run_dir = trained
    monkeypatch.syspath_prepend(str(folder))  # where my_algo.ALGORITHM imports from, as metarun's cwd is
    from my_data import glyphs  # the example's own module, found through the path above

    from metarun import load_learner

    learner = load_learner(run_dir / "checkpoints" / "best.pt")
    names = ["ant", "bee", "cat", "dog", "eel"]
    pixels = glyphs(torch.Generator().manual_seed(7), 1, 5, 11, 8, 0.2, torch.device("cpu"))[0]  # [5, 11, 1, 8, 8]
    images = (pixels * 255).round().to(torch.uint8)
    support, query = images[:, :1].flatten(0, 1), images[:, 1:].flatten(0, 1)  # 1 shot, 10 queries per class
    predicted = learner.adapt(support, names).predict(query)
    accuracy = np.mean([p == t for p, t in zip(predicted, [n for n in names for _ in range(10)])])
    assert accuracy > 0.4, accuracy  # chance is 0.2


@pytest.mark.parametrize("override, expected", [
    ("+algo.temperatur=fixed", "algo.temperatur is not a config key; did you mean algo.temperature?"),
    ("algo.temperature=fast", "algo.temperature=fast is not one of learned, fixed"),
    ("algo.temperatur=fixed", "algo.temperatur"),
    ("algo._target_=nowhere.ALGORITHM", "algo._target_=nowhere.ALGORITHM cannot be imported"),
])
def test_errors_in_own_settings_are_one_line_naming_the_key(tmp_path, override, expected):
    out = run_cli(*COMMAND, override, "hydra.run.dir=run", cwd=own_folder(tmp_path))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("metarun: error: "), out.stderr
    assert expected in out.stderr, out.stderr
    assert not (tmp_path / "own_algorithm" / "run").exists()
