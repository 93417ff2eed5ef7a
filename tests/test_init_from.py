"""train.init_from: a new run starts from the tensors of another run's checkpoint that match its network by name
and shape (a pre-trained backbone), leaves the rest as built, and says so; a resumed run ignores it."""

import shutil

import pytest
import torch

from metarun.logging import console
from metarun.runner.checkpoint import initialise_from, save_checkpoint
from metarun.runner.components import build_components
from metarun.runner.train import run
from metarun.utils.errors import RunError
from tests.conftest import TINY, compose_config, run_cli, tiny_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The best checkpoint of a short MAML run on sinusoids (MLP 1-40-40-1)."""
    folder = tmp_path_factory.mktemp("trained")
    run(compose_config(["algo=maml", "dataset=sinusoid", *TINY], output_dir=folder))
    return folder / "checkpoints" / "best.pt"


def params_of(hidden: str) -> tuple:
    parts = build_components(compose_config(["algo=maml", "dataset=sinusoid", *TINY, f"model.hidden={hidden}"]))
    return parts.model, parts.params


def test_the_tensors_of_matching_name_and_shape_are_taken_and_the_rest_left_as_built(trained, capsys, monkeypatch):
    monkeypatch.setitem(console._shown, "progress", True)  # start-up notes are printed
    saved = torch.load(trained, weights_only=True)["params"]
    model, params = params_of("[40,40]")
    initialise_from(trained, model, params)
    assert params.keys() == saved.keys() and all(torch.equal(params[name], saved[name]) for name in params)
    model, params = params_of("[40,20]")  # the first layer and the output's bias keep the checkpoint's shapes
    built = {name: value.clone() for name, value in params.items()}
    initialise_from(trained, model, params)
    same = [name for name in params if params[name].shape == saved[name].shape]
    assert same == ["0.weight", "0.bias", "4.bias"] and all(torch.equal(params[name], saved[name]) for name in same)
    assert all(torch.equal(params[name], built[name]) for name in params if name not in same)
    assert capsys.readouterr().err.splitlines()[-1].endswith("; as built: 2.weight, 2.bias, 4.weight")


def test_a_checkpoint_with_nothing_in_common_or_no_file_is_one_line(tmp_path):
    save_checkpoint(tmp_path / "other.pt", tiny_checkpoint())  # one tensor "w", of no network here
    model, params = params_of("[40,40]")
    with pytest.raises(RunError, match=r"holds no tensor of this run's network \(no name and shape in common\)"):
        initialise_from(tmp_path / "other.pt", model, params)
    out = run_cli("debug=default", f"train.init_from={tmp_path / 'none.pt'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1 and not (tmp_path / "run").exists()
    assert out.stderr.strip().splitlines()[-1] == (f"metarun: error: train.init_from={tmp_path / 'none.pt'} does not "
                                                   "exist; give the path of a run's checkpoints/best.pt")


def test_a_new_run_starts_from_the_checkpoint_and_a_resumed_one_from_its_own(trained, tmp_path):
    shutil.copy(trained, tmp_path / "init.pt")
    overrides = ["algo=maml", "dataset=sinusoid", *TINY, "optim.lr=0.001", f"train.init_from={tmp_path / 'init.pt'}"]
    run(compose_config([*overrides, "train.iterations=1"], output_dir=tmp_path / "run"))
    after_one = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["params"]
    saved = torch.load(trained, weights_only=True)["params"]
    # Adam's first step moves each coordinate by the learning rate at most: from the checkpoint, not a new network
    assert all((after_one[name] - saved[name]).abs().max() <= 0.001 * 1.01 for name in saved)
    # the file gone, the run resumes: its own last.pt decides, and init_from is not read
    (tmp_path / "init.pt").unlink()
    run(compose_config([*overrides, "train.iterations=2"], output_dir=tmp_path / "run"))
