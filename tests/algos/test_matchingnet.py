"""Matching Networks: the attention's class probabilities by hand, the FCE LSTMs against torch's modules, the
meta-gradient against finite differences, vmap and threads against the loop, load_learner and the one-line errors."""

import pytest
import torch
import torch.nn.functional as F

from metarun import load_learner
from metarun.algos import matchingnet
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MatchingNetConfig
from metarun.models import without_head
from metarun.models.network import functional_forward
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import assert_mapped_equals_loop, few_shot_accuracy
from tests.conftest import TINY, compose_config
from tests.synthetic import TinyCNN, image_config

CE = OBJECTIVES["classification"]


def tiny_problem(cfg, seed=0):
    """A float64 embedding (3 -> 4, tanh) with ``cfg``'s meta-parameters, and a 3-way 2-shot task of 5 queries: the
    support size 6 leaves three columns for absent classes."""
    torch.manual_seed(seed)
    model = without_head(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 9)).double())
    params = {name: t.detach().clone() for name, t in matchingnet.meta_params(model, cfg).items()}
    task = (torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2]),
            torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    return functional_forward(model), params, task


def test_log_probabilities_are_the_cosine_attention_summed_over_each_class():
    forward, params, (sx, sy, qx, qy) = tiny_problem(MatchingNetConfig())
    support, query = forward(params, sx), forward(params, qx)
    cosine = torch.stack([torch.stack([F.cosine_similarity(q, s, dim=0) for s in support]) for q in query])
    attention = torch.softmax(cosine, 1)  # eq. 2
    probabilities = torch.stack([attention[:, sy == c].sum(1) for c in range(3)], 1)  # eq. 1
    scores = matchingnet.predict(forward, params, sx, sy, qx, MatchingNetConfig(), CE)
    torch.testing.assert_close(scores[:, :3], probabilities.log())
    assert torch.isneginf(scores[:, 3:]).all()
    # cross-entropy on log-probabilities is their NLL: they already sum to one
    loss, _ = matchingnet.meta_loss(forward, params, sx, sy, qx, qy, MatchingNetConfig(), CE)
    torch.testing.assert_close(loss, -probabilities.log()[torch.arange(5), qy].mean())


def test_full_context_embeddings_are_torchs_lstms_with_the_papers_skip_connections():
    cfg = MatchingNetConfig(fce=True, fce_steps=3)
    _, params, _ = tiny_problem(cfg)
    support, query = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)

    def module(kind, prefix):
        layer = kind.double()
        layer.load_state_dict({name[len(prefix):]: t for name, t in params.items() if name.startswith(prefix)})
        return layer

    both, _ = module(torch.nn.LSTM(4, 4, bidirectional=True), matchingnet.SUPPORT_LSTM)(support)
    context = support + both[:, :4] + both[:, 4:]  # g(x_i, S) = h_fwd + h_bwd + g'(x_i)
    torch.testing.assert_close(matchingnet.support_context(params, support), context)
    cell = module(torch.nn.LSTMCell(8, 4), matchingnet.QUERY_LSTM)
    h, c = query, torch.zeros_like(query)
    for _ in range(3):  # the read r_{k-1} attends with h_{k-1}; h_k = LSTM output + f'(x)
        read = torch.softmax(h @ context.T, 1) @ context
        h, c = cell(torch.cat([query, read], 1), (h, c))
        h = h + query
    torch.testing.assert_close(matchingnet.query_context(params, query, context, 3), h)


@pytest.mark.parametrize("fce", [False, True])
def test_meta_gradient_matches_finite_differences(fce):
    # absent classes' columns (log 0) included: their -inf must not turn the gradient into NaN
    forward, params, task = tiny_problem(MatchingNetConfig(fce=fce, fce_steps=2))
    names = list(params)

    def loss(*tensors):
        return matchingnet.meta_loss(forward, dict(zip(names, tensors)), *task, MatchingNetConfig(fce=fce, fce_steps=2),
                                     CE)[0]

    inputs = tuple(t.clone().requires_grad_() for t in params.values())
    # fast mode: finite differences along a random direction of all the tensors at once, not one entry at a time
    assert torch.autograd.gradcheck(loss, inputs, fast_mode=True)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss(*inputs), inputs))  # every tensor is learned


@pytest.mark.parametrize("fce", [False, True])
@pytest.mark.parametrize("mapping", ["vmap", "threads"])
def test_mapped_tasks_equal_the_loop(mapping, fce):
    model = without_head(TinyCNN((1, 12, 12), 3, width=4))
    assert_mapped_equals_loop(matchingnet.ALGORITHM, MatchingNetConfig(fce=fce, fce_steps=2), model, mapping)


@pytest.mark.parametrize("fce", [False, True])
def test_load_learner_adapts_and_predicts_any_number_of_ways(tmp_path, fce):
    run(image_config(["algo=matchingnet", f"algo.fce={str(fce).lower()}", "train.iterations=10", "eval.episodes=10"],
                     output_dir=tmp_path, noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    for classes in ((60, 61, 62, 63, 64), (60, 61, 62)):  # meta-trained 5-way; no head, so 3 ways work too
        assert few_shot_accuracy(learner, classes) > 0.6, classes  # chance is 1/5 and 1/3


def test_fce_steps_of_zero_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^algo.fce_steps must be > 0, got 0; set e.g. algo.fce_steps=1$"):
        build_components(image_config(["algo=matchingnet", "algo.fce=true", "algo.fce_steps=0"]))


def test_a_regression_dataset_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^algo=matchingnet does not support regression \(dataset=sinusoid\); pick a "
                                         r"classification dataset$"):
        build_components(compose_config(["algo=matchingnet", *TINY]))
