"""algo.embedding_pass: the algorithms that score a task on embeddings put support and query through the backbone in
one pass or two; the two agree wherever batch norm uses no batch statistics, a pass each reproduces the numbers of
before the setting under batch statistics (and checkpoints without the key get it), inductive evaluation stays
inductive, and under vmap one pass embeds the whole meta-batch."""

from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import vmap
from torch.utils._python_dispatch import TorchDispatchMode

from metarun.algos import baseline, matchingnet, metaoptnet_svm, protonet, r2d2, relationnet
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import (
    BaselineConfig,
    MatchingNetConfig,
    MetaOptNetSVMConfig,
    ProtoNetConfig,
    R2D2Config,
    RelationNetConfig,
)
from metarun.models import without_head
from metarun.models.batchnorm import in_context, support_context
from metarun.models.network import functional_forward
from metarun.runner.components import algorithm_of, build_components
from metarun.runner.evaluate import checkpoint_config
from tests.conftest import compose_config
from tests.synthetic import TinyCNN, image_config

CE = OBJECTIVES["classification"]
SETTINGS = {
    "protonet": (protonet, ProtoNetConfig()),
    "matchingnet": (matchingnet, MatchingNetConfig()),
    "matchingnet-fce": (matchingnet, MatchingNetConfig(fce=True, fce_steps=2)),
    "relationnet": (relationnet, RelationNetConfig(hidden=4)),
    "r2d2": (r2d2, R2D2Config()),
    "metaoptnet_svm": (metaoptnet_svm, MetaOptNetSVMConfig()),
    "baseline": (baseline, BaselineConfig(fit_steps=5)),
    "baselinepp": (baseline, BaselineConfig(classifier="cosine", fit_steps=5)),
}


def no_norm_cnn(input_shape, out_features):
    """A CNN without batch norm: every example's embedding is its own."""
    return torch.nn.Sequential(torch.nn.Conv2d(input_shape[0], 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 36, out_features))


def network(name: str, model: torch.nn.Module):
    """``forward`` and the meta-parameters of ``name``'s algorithm on ``model`` (in float64: MetaOptNet's 50 solver
    steps would carry float32's rounding of the batched convolutions past a tight tolerance)."""
    module, cfg = SETTINGS[name]
    model = (model if module.ALGORITHM.has_head else without_head(model)).double()
    return functional_forward(model), module.ALGORITHM.meta_params(model, cfg)


def episode():
    """A 3-way 2-shot episode of 12x12 images with 3 queries per class, in float64."""
    torch.manual_seed(0)
    labels = torch.arange(3)
    return (torch.randn(6, 1, 12, 12, dtype=torch.float64), labels.repeat(2),
            torch.randn(9, 1, 12, 12, dtype=torch.float64), labels.repeat(3))


def outputs(name: str, forward, params, embedding_pass: str) -> dict:
    """The meta-loss, metric, meta-gradient, evaluation curve and predictions of ``name`` on ``episode()``."""
    algorithm, cfg = SETTINGS[name][0].ALGORITHM, replace(SETTINGS[name][1], embedding_pass=embedding_pass)
    sx, sy, qx, qy = episode()
    loss, metric = algorithm.meta_loss(forward, params, sx, sy, qx, qy, cfg, CE)
    gradients = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    found = {"loss": loss, "metric": metric, "curve": algorithm.evaluate_task(forward, params, sx, sy, qx, qy, cfg, CE),
             "predict": algorithm.predict(forward, params, sx, sy, qx, cfg, CE)}
    return {**found, **{key: g for key, g in zip(params, gradients) if g is not None}}


@pytest.mark.parametrize("norm", ["running", "none"])
@pytest.mark.parametrize("name", SETTINGS)
def test_one_pass_and_two_agree_without_batch_statistics(name, norm):
    # eval mode with running averages, or no batch norm: no example's embedding depends on another's
    model = no_norm_cnn((1, 12, 12), 5) if norm == "none" else TinyCNN((1, 12, 12), 5, width=8, norm="running").eval()
    forward, params = network(name, model)
    joint, separate = outputs(name, forward, params, "joint"), outputs(name, forward, params, "separate")
    assert joint.keys() == separate.keys() and len(joint) > 4  # the meta-gradient reached the network
    for key, value in separate.items():
        torch.testing.assert_close(joint[key], value, msg=key)


def test_under_batch_statistics_a_pass_each_is_the_embedding_of_before_and_one_pass_normalises_both_sets_together():
    forward, params = network("protonet", TinyCNN((1, 12, 12), 5, width=8))
    sx, sy, qx, _ = episode()

    def by_hand(support, query):  # prototypes from the support embeddings, negative squared distances to them
        prototypes = torch.stack([support[sy == c].mean(0) for c in range(3)])
        return -torch.cdist(query, prototypes) ** 2

    def scores(embedding_pass: str):
        return protonet.predict(forward, params, sx, sy, qx, ProtoNetConfig(embedding_pass=embedding_pass), CE)[:, :3]

    both = forward(params, torch.cat([sx, qx]))
    torch.testing.assert_close(scores("separate"), by_hand(forward(params, sx), forward(params, qx)))
    torch.testing.assert_close(scores("joint"), by_hand(both[:6], both[6:]))
    assert not torch.allclose(scores("joint"), scores("separate"), atol=1e-3)


@pytest.mark.parametrize("name", SETTINGS)
def test_inductive_evaluation_stays_inductive_with_one_pass(name):
    # eval.transductive=false: each query with the support set's batch statistics plus its own, whatever the others are
    forward, params = network(name, TinyCNN((1, 12, 12), 5, width=8))
    in_support, cfg = support_context(forward, 3), replace(SETTINGS[name][1], embedding_pass="joint")
    sx, sy, qx, _ = episode()
    predict = SETTINGS[name][0].ALGORITHM.predict
    together = predict(in_support, params, sx, sy, in_context(sx, qx), cfg, CE)
    alone = torch.cat([predict(in_support, params, sx, sy, in_context(sx, q), cfg, CE) for q in qx.split(1)])
    torch.testing.assert_close(together, alone)
    separate = predict(in_support, params, sx, sy, in_context(sx, qx), replace(cfg, embedding_pass="separate"), CE)
    torch.testing.assert_close(together, separate)


def test_the_runs_inductive_evaluation_scores_each_query_as_if_alone():
    parts = build_components(image_config(["algo=protonet", "algo.embedding_pass=joint"], ways=3, shots=2))
    sx, sy, qx, qy = (t[0] for t in parts.source.episodes("test", 0, 0, 1).tensors())
    accuracy = parts.eval_task(transductive=False)(parts.params, sx, sy, qx, qy)
    forward = support_context(parts.forward, 3)
    with torch.no_grad():
        alone = torch.cat([protonet.predict(forward, parts.params, sx, sy, in_context(sx, q), parts.settings, CE)
                           for q in qx.split(1)])
    assert accuracy.item() == pytest.approx((alone.argmax(-1) == qy).float().mean().item())


def saved_config(algo: str, run_dir) -> dict:
    """The resolved config of an ``algo`` run in ``run_dir`` as a checkpoint written before algo.embedding_pass holds
    it."""
    saved = OmegaConf.to_container(compose_config([f"algo={algo}"], run_dir), resolve=True)
    del saved["algo"]["embedding_pass"]
    return saved


@pytest.mark.parametrize("algo", ["protonet", "baselinepp"])  # every schema takes the key from EmbeddingConfig
def test_a_checkpoint_without_the_key_evaluates_with_a_pass_each_as_it_was_trained(tmp_path, algo):
    cfg = compose_config(["mode=eval", "checkpoint=best.pt", f"algo={algo}"], tmp_path)
    assert algorithm_of(checkpoint_config(cfg, saved_config(algo, tmp_path), []))[1].embedding_pass == "separate"
    # the one pass stays one override away
    overrides = ["mode=eval", "checkpoint=best.pt", f"algo={algo}", "algo.embedding_pass=joint"]
    joint = checkpoint_config(compose_config(overrides, tmp_path), saved_config(algo, tmp_path), overrides)
    assert algorithm_of(joint)[1].embedding_pass == "joint"


class Convolutions(TorchDispatchMode):
    """Counts the convolution kernels run within the block (under vmap: the batched calls, one per layer)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket == torch.ops.aten.convolution
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("embedding_pass, passes", [("joint", 1), ("separate", 2)])
def test_under_vmap_one_pass_embeds_the_whole_meta_batch(embedding_pass, passes):
    model = without_head(TinyCNN((1, 12, 12), 5, width=8))  # two convolutions
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = ProtoNetConfig(embedding_pass=embedding_pass)
    labels = torch.arange(3)
    tasks = (torch.randn(4, 6, 1, 12, 12), labels.repeat(4, 2), torch.randn(4, 9, 1, 12, 12), labels.repeat(4, 3))
    with Convolutions() as convolutions:
        vmap(lambda *task: protonet.meta_loss(forward, params, *task, cfg, CE)[0])(*tasks)
    assert convolutions.count == 2 * passes
