"""mode=eval with eval.ensemble: several checkpoints scored as one classifier, the mean of their probabilities."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metarun.config.validate import check
from metarun.logging.episodes import read_episodes
from metarun.models.batchnorm import in_context, support_context
from metarun.runner.checkpoint import load_checkpoint, restore_buffers
from metarun.runner.components import build_components
from metarun.runner.evaluate import checkpoint_config, evaluate_checkpoint
from metarun.runner.train import run
from tests.conftest import REPO, TINY, compose_config, run_cli
from tests.synthetic import image_config

TRAINED = {"protonet": ["algo=protonet", "seed=0"], "protonet_seed1": ["algo=protonet", "seed=1"],
           "maml": ["algo=maml", "algo.inner_steps=1", "algo.test_inner_steps=2"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """best.pt of short synthetic runs: two ProtoNets of different seeds and a MAML (5-way 1-shot each)."""
    folder = tmp_path_factory.mktemp("ensemble")
    for name, overrides in TRAINED.items():
        run(image_config([*overrides, "train.iterations=40"], output_dir=folder / name))
    return {name: folder / name / "checkpoints" / "best.pt" for name in TRAINED}


def eval_config(checkpoint, output_dir, *overrides):
    """The composed ``mode=eval`` command of ``checkpoint``'s own run config, with ``overrides``."""
    saved = OmegaConf.create(load_checkpoint(checkpoint).config)
    cfg = image_config(["mode=eval", f"checkpoint={checkpoint}", *overrides], output_dir=output_dir)
    cfg.algo, cfg.model = saved.algo, saved.model
    output_dir.mkdir()
    return cfg


def probabilities(path, batch, transductive: bool) -> torch.Tensor:
    """One checkpoint's class probabilities [T, Q, N] of ``batch``'s queries, computed directly by its algorithm:
    transductive, or each query alone with the support set (``in_context``)."""
    checkpoint = load_checkpoint(path)
    parts = build_components(OmegaConf.create(checkpoint.config))
    restore_buffers(parts.model, checkpoint)
    parts.model.eval()
    forward = parts.forward if transductive else support_context(parts.forward, 3)
    with torch.no_grad():
        return torch.stack([parts.algorithm.predict(forward, checkpoint.params, sx, sy,
                                                    qx if transductive else in_context(sx, qx), parts.settings,
                                                    parts.objective).softmax(-1) for sx, sy, qx, _ in zip(*batch.tensors())])


@pytest.mark.parametrize("transductive", [True, False])
def test_an_ensemble_scores_each_episode_by_its_members_mean_probability(checkpoints, tmp_path, transductive):
    members = [checkpoints["protonet_seed1"], checkpoints["maml"]]
    overrides = [f"eval.ensemble=[{','.join(map(str, members))}]", f"eval.transductive={transductive}"]
    cfg = eval_config(checkpoints["protonet"], tmp_path / "eval", *overrides)
    results = evaluate_checkpoint(cfg, overrides)
    assert results["ensemble"] == [str(path) for path in members]
    # by hand: each checkpoint's probabilities on the same fixed episodes, averaged, then each episode's accuracy
    parts = build_components(checkpoint_config(cfg, load_checkpoint(checkpoints["protonet"]).config, []))
    batch = parts.source.episodes("test", cfg.eval.seed, 0, cfg.eval.episodes)
    probabilities_of = [probabilities(path, batch, transductive) for path in [checkpoints["protonet"], *members]]
    mean = sum(probabilities_of) / 3
    by_hand = (mean.argmax(-1) == batch.query_y).double().mean(1).numpy()
    kept = read_episodes(tmp_path / "eval" / "test_episodes.npz")
    np.testing.assert_allclose(kept.metric, by_hand)
    assert results["test/acc"] == pytest.approx(by_hand.mean())
    # the members count: each checkpoint alone scores other episodes otherwise
    alone = [(own.argmax(-1) == batch.query_y).double().mean(1).numpy() for own in probabilities_of]
    assert all(not np.array_equal(by_hand, own) for own in alone)


def test_an_ensemble_member_gets_the_commands_keys_where_its_algorithm_has_them(checkpoints, tmp_path):
    maml, protonet = str(checkpoints["maml"]), str(checkpoints["protonet"])
    steps = "algo.test_inner_steps=3"
    # the checkpoint listed again is left out; a copy of it predicts as it does: the ensemble scores as the
    # checkpoint alone, both with the command's 3 test-time steps
    alone = evaluate_checkpoint(eval_config(checkpoints["maml"], tmp_path / "alone", steps), [steps])
    copy = str(shutil.copy(maml, tmp_path / "copy.pt"))  # another file, the same weights: a member
    cfg = eval_config(checkpoints["maml"], tmp_path / "twice", steps, f"eval.ensemble=[{maml},{copy}]")
    twice = evaluate_checkpoint(cfg, [steps, f"eval.ensemble=[{maml},{copy}]"])
    assert twice["ensemble"] == [copy] and twice["test/acc"] == pytest.approx(alone["test/acc"])
    # a ProtoNet member has no test-time steps: the key is left out for it, not refused
    cfg = eval_config(checkpoints["maml"], tmp_path / "mixed", steps, f"eval.ensemble=[{protonet}]")
    assert evaluate_checkpoint(cfg, [steps, f"eval.ensemble=[{protonet}]"])["ensemble"] == [protonet]


def test_the_command_ensembles_algorithms_with_and_without_a_head_at_several_shots(checkpoints, tmp_path):
    # mode=eval composes the checkpoint's own algo option (algo=protonet), which the MAML member must not take; and
    # at 2 shots ProtoNet scores [Q, 10] columns (the support set bounds its classes) and MAML [Q, 5]
    out = run_cli("mode=eval", f"checkpoint={checkpoints['protonet']}", f"eval.ensemble=[{checkpoints['maml']}]",
                  "eval.shots=2", f"hydra.run.dir={tmp_path}/eval", cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["ensemble"] == [str(checkpoints["maml"])]


def test_an_ensemble_refuses_members_it_cannot_score_with_the_checkpoint(checkpoints, tmp_path):
    saved = torch.load(checkpoints["protonet_seed1"], weights_only=True)
    saved["data"] = {**saved["data"], "normalisation": ([0.1], [0.3])}
    torch.save(saved, tmp_path / "other_inputs.pt")
    run(image_config(["algo=maml", "algo.inner_steps=1", "train.iterations=1"], output_dir=tmp_path / "three", ways=3))
    run(image_config(["algo=relationnet", "train.iterations=1"], output_dir=tmp_path / "relation"))
    refusals = {tmp_path / "other_inputs.pt": "was trained on other inputs than checkpoint \\(normalisation",
                tmp_path / "three" / "checkpoints" / "last.pt": "has a head for 3-way tasks \\(algo=maml\\), and these "
                                                                "episodes are 5-way; list checkpoints trained for 5 ways",
                tmp_path / "relation" / "checkpoints" / "last.pt": "algo=relationnet predicts relation scores in "
                                                                   "\\[0, 1\\] \\(a sigmoid each\\), not logits",
                tmp_path / "absent.pt": "absent.pt does not exist"}
    for number, (member, refusal) in enumerate(refusals.items()):
        cfg = eval_config(checkpoints["maml"], tmp_path / f"eval{number}", f"eval.ensemble=[{member}]")
        with pytest.raises((ValueError, FileNotFoundError), match=refusal):
            evaluate_checkpoint(cfg, [f"eval.ensemble=[{member}]"])


def test_an_ensemble_needs_classes_and_mode_eval(tmp_path, small_budget):
    run(compose_config([*small_budget, "train.iterations=1"], output_dir=tmp_path / "sine"))
    sine, best = (tmp_path / "sine" / "checkpoints" / name for name in ("last.pt", "best.pt"))
    cfg = compose_config([*small_budget, "mode=eval", f"checkpoint={sine}", f"eval.ensemble=[{best}]"],
                         output_dir=tmp_path / "eval")
    with pytest.raises(ValueError, match="eval.ensemble averages class probabilities, and this dataset's task is "
                                         "regression; set eval.ensemble=\\[\\]"):
        evaluate_checkpoint(cfg, [f"eval.ensemble=[{best}]"])
    cfg.eval.ensemble = [str(sine)]
    with pytest.raises(ValueError, match="names no checkpoint besides checkpoint="):
        evaluate_checkpoint(cfg, [f"eval.ensemble=[{sine}]"])
    with pytest.raises(ValueError, match="eval.ensemble=\\['a.pt'\\] scores checkpoints together in mode=eval"):
        check(compose_config([*TINY, "eval.ensemble=[a.pt]"]))


def test_an_ensemble_pattern_stands_for_its_files_less_the_checkpoint_itself(checkpoints, tmp_path):
    pattern = f"eval.ensemble=[{checkpoints['maml'].parents[2]}/*/checkpoints/best.pt]"
    results = evaluate_checkpoint(eval_config(checkpoints["protonet"], tmp_path / "eval", pattern), [pattern])
    assert results["ensemble"] == [str(checkpoints[name]) for name in ("maml", "protonet_seed1")]
    nothing = f"eval.ensemble=[{tmp_path}/*/best.pt]"
    with pytest.raises(ValueError, match=f"eval.ensemble: {tmp_path}/\\*/best.pt matches no file"):
        evaluate_checkpoint(eval_config(checkpoints["protonet"], tmp_path / "none", nothing), [nothing])


def test_an_ensemble_runs_in_the_task_mappings_every_member_runs_in(checkpoints, tmp_path):
    # torch's checkpoint of MAML's inner loop runs in the loop only, where ProtoNet runs in every mapping
    run(image_config(["algo=maml", "algo.inner_steps=1", "algo.checkpoint_inner=true", "train.iterations=1"],
                     output_dir=tmp_path / "loop"))
    member = tmp_path / "loop" / "checkpoints" / "last.pt"
    forced = [f"eval.ensemble=[{member}]", "hardware.task_parallel=vmap"]
    with pytest.raises(ValueError, match="hardware.task_parallel=vmap: a member of eval.ensemble does not run these "
                                         "episodes in it; set hardware.task_parallel=loop or auto"):
        evaluate_checkpoint(eval_config(checkpoints["protonet"], tmp_path / "vmap", *forced), forced)
    auto = [f"eval.ensemble=[{member}]", "hardware.task_parallel=auto"]
    results = evaluate_checkpoint(eval_config(checkpoints["protonet"], tmp_path / "auto", *auto), auto)
    assert results["hardware/task_parallel"] == "loop"
