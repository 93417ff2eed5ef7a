"""examples/stroke_aux: the stroke maps against a hand computation and the real strokes' ink, and the README's run
(both ways of predicting the maps, ProtoNet's updates at weight 0, the errors of its settings) from a copy of the
folder on the real Omniglot subsets."""

import json
import re
import shlex
import shutil

import pytest
import torch

from metarun.data.files.store import ImageStore
from metarun.data.sampling.strokes import StrokeTable, read_strokes, render, segments_of
from tests.conftest import REPO, load_script, run_cli
from tests.data.conftest import omniglot_dir  # noqa: F401  (the real subsets, skipped where absent)

EXAMPLE = REPO / "examples" / "stroke_aux"
SHORT = ["train.iterations=20", "train.log_every=5", "train.val_every=20", "train.checkpoint_every=20",
         "eval.episodes=10", "eval.val_episodes=10", "model.width=16", "hardware.num_threads=1", "logger.console=false",
         "hardware.precision=fp32"]  # the README's bf16 needs a CPU with AMX to be fast


stroke_data = load_script(EXAMPLE / "stroke_data.py", "stroke_data")


def test_the_maps_of_a_drawing_match_a_hand_computation():
    # one stroke from (0.1, 0.1) right to (0.5, 0.1) in steps of 0.1, then a dot at (0.9, 0.9), at 10 px
    points = torch.tensor([[[0.1, 0.1], [0.2, 0.1], [0.3, 0.1], [0.4, 0.1], [0.5, 0.1], [0.9, 0.9], [0.9, 0.9]]])
    strokes = torch.tensor([[0, 0, 0, 0, 0, 1, 1]])
    maps = stroke_data.stroke_maps(points, strokes, 10)
    starts, ends, move_x, move_y, order = maps[0]
    assert starts.nonzero().tolist() == [[1, 1], [9, 9]] and ends.nonzero().tolist() == [[1, 5], [9, 9]]
    assert move_x[1, 1:5].tolist() == pytest.approx([1.0] * 4) and move_x.sum() == pytest.approx(4.0)
    assert move_y.abs().sum() == 0  # the dot does not move the pen
    assert order[1, 1:5].tolist() == pytest.approx([0.25] * 4) and order.sum() == pytest.approx(1.0)  # first of 2


def test_the_maps_of_the_real_strokes_lie_on_their_ink(omniglot_dir):  # noqa: F811
    drawings = read_strokes(omniglot_dir / "strokes_background_small1.zip", spacing=1 / 28)
    names = sorted(drawings)[::40]
    offsets = torch.tensor([0, *torch.tensor([len(drawings[name]) for name in names]).cumsum(0)])
    store = ImageStore(torch.zeros(int(offsets[-1]), 1, 1, 1, dtype=torch.uint8), offsets, tuple(names))
    table = StrokeTable.build({name: drawings[name] for name in names}, store)
    maps = stroke_data.stroke_maps(table.points, table.strokes, 28)
    ink = render(table.points, segments_of(table.strokes), 28) > 0.3
    assert (maps.abs() * ink).sum() / maps.abs().sum() > 0.99
    starts = maps[:, 0].flatten(1).sum(1)
    assert starts.tolist() == (table.strokes.max(1).values + 1).float().tolist()  # one start per stroke
    assert stroke_data.scaled(maps).shape == maps.shape


def _command() -> list:
    (line,) = re.findall(r"^metarun .*$", (EXAMPLE / "README.md").read_text(), re.M)
    return shlex.split(line)[1:]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, omniglot_dir):  # noqa: F811
    """A copy of the example folder, and the README's command reading the real subsets."""
    copy = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("example") / "stroke_aux",
                           ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    command = [f"dataset.root={omniglot_dir}" if arg.startswith("dataset.root=") else arg for arg in _command()]
    return copy, [*command, f"dataset.cache_dir={copy}/cache"]


def _run(folder, name, *overrides):
    copy, command = folder
    out = run_cli(*command, *SHORT, *overrides, f"hydra.run.dir={name}", cwd=copy)
    assert out.returncode == 0, out.stderr
    return copy / name


@pytest.mark.parametrize("source", ["embedding", "block2"])
def test_the_readme_run_trains_the_decoder_and_scores_above_chance(folder, source):
    run = _run(folder, source, f"algo.predict_from={source}")
    results = json.loads((run / "results.json").read_text())
    assert results["algo"] == "stroke_aux" and results["test/acc"] > 0.15  # 20-way: chance 0.05
    params = torch.load(run / "checkpoints" / "best.pt", weights_only=False)["params"]
    assert params["meta/strokes_bias"].abs().sum() > 0  # the decoder was trained (it starts at zero)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    plain = json.loads((_run(folder, f"{source}-plain", f"algo.predict_from={source}", "algo.weight=0") /
                        "metrics.jsonl").read_text().splitlines()[0])
    assert first["train/loss"] > plain["train/loss"]  # the auxiliary error is part of the loss


def test_weight_zero_makes_protonets_updates(folder):
    copy, command = folder
    # the preset as it is: ProtoNet on metarun's Omniglot (whose strokes.files would re-draw images)
    plain = [arg for arg in command
             if not arg.startswith(("algo=", "dataset._target_", "dataset.strokes.files", "hydra.searchpath"))]
    out = run_cli(*plain, *SHORT, "hydra.run.dir=protonet", cwd=copy)
    assert out.returncode == 0, out.stderr
    zero = _run(folder, "zero", "algo.weight=0")
    losses = [[json.loads(line)["train/loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (copy / "protonet", zero)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("overrides, message", [
    (["algo.predict_from=block2", "model.max_pool=false"],
     "algo.predict_from=block2 reads Conv-4's second block (model=conv4 as the papers build it"),
    (["dataset.strokes.files=[]"], "stroke_data.DATASET draws its maps from the pen strokes; set "
                                   "dataset.strokes.files"),
    (["algo.weight=-0.5"], "algo.weight=-0.5 is negative"),
])
def test_settings_it_cannot_run_are_one_line(folder, overrides, message):
    copy, command = folder
    out = run_cli(*command, *SHORT, *overrides, "hydra.run.dir=refused", cwd=copy)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr
    assert not (copy / "refused" / "results.json").exists()

