"""Relation Networks: the relation module on concatenated (class sum, query) embeddings and both losses by hand, the
comparing initialisation, the meta-gradient against finite differences, vmap and threads against the loop,
load_learner and the one-line errors."""

import pytest
import torch
import torch.nn.functional as F

from metarun import load_learner
from metarun.algos import relationnet
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import RelationNetConfig
from metarun.models import without_head
from metarun.models.network import functional_forward
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import assert_mapped_equals_loop, few_shot_accuracy
from tests.conftest import TINY, compose_config
from tests.synthetic import TinyCNN, image_config

CE = OBJECTIVES["classification"]
RELATION = relationnet.RELATION


def tiny_problem(seed=0, hidden=5):
    """A float64 embedding (3 -> 4, tanh) with a relation module of ``hidden`` units drawn at random (not at its
    initialisation, so that every path matters), and a 3-way 2-shot task of 5 queries: the support size 6 leaves
    three columns for absent classes."""
    torch.manual_seed(seed)
    model = without_head(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 9)).double())
    params = {name: (torch.randn_like(t) if name.startswith(RELATION) else t).detach().clone()
              for name, t in relationnet.meta_params(model, RelationNetConfig(hidden=hidden)).items()}
    task = (torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2]),
            torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    return functional_forward(model), params, task


def test_scores_are_the_relation_mlp_on_concatenated_class_sums_and_queries_and_the_losses_are_the_papers():
    forward, params, (sx, sy, qx, qy) = tiny_problem()
    network = {name: t for name, t in params.items() if not name.startswith(RELATION)}
    support, query = forward(network, sx), forward(network, qx)
    classes = torch.stack([support[sy == c].sum(0) for c in range(3)])  # K-shot: the sum of the class's embeddings
    pairs = torch.cat([classes.expand(5, 3, 4), query.unsqueeze(1).expand(5, 3, 4)], -1)  # [f(x_class), f(x_query)]
    hidden = F.relu(F.linear(pairs, params[f"{RELATION}hidden.weight"], params[f"{RELATION}hidden.bias"]))
    logits = F.linear(hidden, params[f"{RELATION}out.weight"], params[f"{RELATION}out.bias"]).squeeze(-1)
    scores = relationnet.predict(forward, params, sx, sy, qx, RelationNetConfig(), CE)
    torch.testing.assert_close(scores[:, :3], torch.sigmoid(logits))
    assert (scores[:, 3:] == 0).all()  # absent classes score lowest
    mse, _ = relationnet.meta_loss(forward, params, sx, sy, qx, qy, RelationNetConfig(loss="mse"), CE)
    torch.testing.assert_close(mse, F.mse_loss(torch.sigmoid(logits), F.one_hot(qy, 3).double()))  # eq. 2
    ce, accuracy = relationnet.meta_loss(forward, params, sx, sy, qx, qy, RelationNetConfig(loss="ce"), CE)
    torch.testing.assert_close(ce, F.cross_entropy(logits, qy))
    assert accuracy == (logits.argmax(1) == qy).float().mean()


def test_the_initial_module_scores_a_query_highest_against_its_own_embedding():
    # each hidden unit starts as ReLU(v . (class - query)): zero for a query equal to its class's embedding, so its own
    # class scores sigmoid(0) and every other at most that
    model = without_head(torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)))
    params = relationnet.meta_params(model, RelationNetConfig(hidden=16))
    embeddings = torch.rand(5, 6)
    logits = relationnet.relation_logits(lambda p, x: x, params, embeddings, torch.arange(5), embeddings,
                                          RelationNetConfig(hidden=16))
    torch.testing.assert_close(logits.diagonal(), torch.zeros(5))
    assert (logits[~torch.eye(5, dtype=torch.bool)] < 0).all()


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_meta_gradient_matches_finite_differences(loss):
    # absent classes' columns (-inf before the sigmoid) included: they must not turn the gradient into NaN
    forward, params, task = tiny_problem()
    names = list(params)

    def objective(*tensors):
        return relationnet.meta_loss(forward, dict(zip(names, tensors)), *task, RelationNetConfig(loss=loss), CE)[0]

    inputs = tuple(t.clone().requires_grad_() for t in params.values())
    assert torch.autograd.gradcheck(objective, inputs)
    grads = dict(zip(names, torch.autograd.grad(objective(*inputs), inputs)))
    # every tensor is learned, but under cross-entropy the output bias, which shifts every class's logit alike: its
    # gradient is zero up to float rounding (exactly zero on some CPUs' kernels, not on others')
    largest = max(g.abs().max().item() for g in grads.values())
    unlearned = {name for name, g in grads.items() if g.abs().sum() <= 1e-6 * largest}
    assert unlearned == ({f"{RELATION}out.bias"} if loss == "ce" else set())


@pytest.mark.parametrize("mapping", ["vmap", "threads"])
def test_mapped_tasks_equal_the_loop(mapping):
    model = without_head(TinyCNN((1, 12, 12), 3, width=4))
    assert_mapped_equals_loop(relationnet.ALGORITHM, RelationNetConfig(), model, mapping)


def test_load_learner_adapts_and_predicts_any_number_of_ways(tmp_path):
    # one shot, as in training: a class is the sum of its shots' embeddings, so the relation module learns their scale.
    # 32 hidden units learn this in 30 updates (the paper's 8 take twice as many), and the learner must rebuild them
    run(image_config(["algo=relationnet", "algo.hidden=32", "train.iterations=30", "optim.lr=0.003",
                      "eval.episodes=10"], output_dir=tmp_path, noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    for classes in ((60, 61, 62, 63, 64), (60, 61, 62)):  # meta-trained 5-way; no head, so 3 ways work too
        assert few_shot_accuracy(learner, classes, shots=1) > 0.6, classes  # chance is 1/5 and 1/3


def test_an_unknown_loss_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^algo.loss=hinge is not one of mse, ce$"):
        build_components(image_config(["algo=relationnet", "algo.loss=hinge"]))


def test_a_relation_module_without_hidden_units_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^algo.hidden must be > 0, got 0; set e.g. algo.hidden=1$"):
        build_components(image_config(["algo=relationnet", "algo.hidden=0"]))


def test_a_regression_dataset_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^algo=relationnet does not support regression \(dataset=sinusoid\); pick a "
                                         r"classification dataset$"):
        build_components(compose_config(["algo=relationnet", *TINY]))
