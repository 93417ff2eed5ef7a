"""mode=eval with eval.ensemble: several checkpoints scored as one classifier, the mean of their probabilities."""

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
from tests.conftest import TINY, compose_config
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
    maml = str(checkpoints["maml"])
    cfg = eval_config(checkpoints["maml"], tmp_path / "ok", "algo.test_inner_steps=3", f"eval.ensemble=[{maml}]")
    alone = eval_config(checkpoints["maml"], tmp_path / "alone", "algo.test_inner_steps=3")
    # the same checkpoint twice predicts as it does alone, with the command's 3 test-time steps in both
    ensemble = evaluate_checkpoint(cfg, ["algo.test_inner_steps=3", f"eval.ensemble=[{maml}]"])
    assert ensemble["test/acc"] == pytest.approx(evaluate_checkpoint(alone, ["algo.test_inner_steps=3"])["test/acc"])
    protonet = str(checkpoints["protonet"])
    cfg = eval_config(checkpoints["maml"], tmp_path / "refused", "algo.test_inner_steps=3", f"eval.ensemble=[{protonet}]")
    with pytest.raises(ValueError, match=f"eval.ensemble: {protonet}: algo.test_inner_steps is not a key of the "
                                         "checkpoint's algo \\(protonet\\)"):
        evaluate_checkpoint(cfg, ["algo.test_inner_steps=3", f"eval.ensemble=[{protonet}]"])


def test_an_ensemble_refuses_members_it_cannot_score_with_the_checkpoint(checkpoints, tmp_path):
    saved = torch.load(checkpoints["protonet_seed1"], weights_only=True)
    saved["data"] = {**saved["data"], "normalisation": ([0.1], [0.3])}
    torch.save(saved, tmp_path / "other_inputs.pt")
    run(image_config(["algo=maml", "algo.inner_steps=1", "train.iterations=1"], output_dir=tmp_path / "three", ways=3))
    refusals = {tmp_path / "other_inputs.pt": "was trained on other inputs than checkpoint \\(normalisation",
                tmp_path / "three" / "checkpoints" / "last.pt": "9.weight is \\[3, .*its network for these episodes "
                                                                "has \\[5, .*list checkpoints trained for these episodes' ways",
                tmp_path / "absent.pt": "absent.pt does not exist"}
    for number, (member, refusal) in enumerate(refusals.items()):
        cfg = eval_config(checkpoints["maml"], tmp_path / f"eval{number}", f"eval.ensemble=[{member}]")
        with pytest.raises((ValueError, FileNotFoundError), match=refusal):
            evaluate_checkpoint(cfg, [f"eval.ensemble=[{member}]"])


def test_an_ensemble_needs_classes_and_mode_eval(tmp_path, small_budget):
    run(compose_config([*small_budget, "train.iterations=1"], output_dir=tmp_path / "sine"))
    sine = tmp_path / "sine" / "checkpoints" / "last.pt"
    cfg = compose_config([*small_budget, "mode=eval", f"checkpoint={sine}", f"eval.ensemble=[{sine}]"],
                         output_dir=tmp_path / "eval")
    with pytest.raises(ValueError, match="eval.ensemble averages class probabilities, and this dataset's task is "
                                         "regression; set eval.ensemble=\\[\\]"):
        evaluate_checkpoint(cfg, [f"eval.ensemble=[{sine}]"])
    with pytest.raises(ValueError, match="eval.ensemble=\\['a.pt'\\] scores checkpoints together in mode=eval"):
        check(compose_config([*TINY, "eval.ensemble=[a.pt]"]))


def test_an_ensemble_pattern_stands_for_its_files_less_the_checkpoint_itself(checkpoints, tmp_path):
    pattern = f"eval.ensemble=[{checkpoints['maml'].parents[2]}/*/checkpoints/best.pt]"
    results = evaluate_checkpoint(eval_config(checkpoints["protonet"], tmp_path / "eval", pattern), [pattern])
    assert results["ensemble"] == [str(checkpoints[name]) for name in ("maml", "protonet_seed1")]
    nothing = f"eval.ensemble=[{tmp_path}/*/best.pt]"
    with pytest.raises(ValueError, match=f"eval.ensemble: {tmp_path}/\\*/best.pt matches no checkpoint besides "):
        evaluate_checkpoint(eval_config(checkpoints["protonet"], tmp_path / "none", nothing), [nothing])
