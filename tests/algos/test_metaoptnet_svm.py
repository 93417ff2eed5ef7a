"""MetaOptNet-SVM: the dual solver against the SVM's optimality certificate (a zero duality gap), the meta-gradient
against finite differences, vmap against the loop, load_learner with any number of ways and the one-line errors."""

import pytest
import torch

from metarun import load_learner
from metarun.algos import metaoptnet_svm as svm
from metarun.algos import r2d2
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MetaOptNetSVMConfig
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import few_shot_accuracy
from tests.algos.test_r2d2 import assert_vmap_equals_loop, linear, linear_task
from tests.synthetic import image_config

CE = OBJECTIVES["classification"]


def svm_problem(seed=0, ways=3, shots=2, dim=5):
    """Support embeddings of ``ways`` separable classes (float64) and their one-hot labels [S, S] (S columns, the
    classes past ``ways`` absent)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(shots)
    centres = 3 * torch.eye(dim, dtype=torch.float64)[labels]
    x = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64) + centres
    return x, torch.nn.functional.one_hot(labels, ways * shots).double()


def primal_and_dual(x, onehot, alpha, c):
    """The Crammer-Singer primal objective at w = x^T alpha and the dual one at alpha, over the classes present."""
    w = x.T @ alpha
    scores = x @ w
    hinge = (1 - onehot) + scores - (scores * onehot).sum(1, keepdim=True)  # 0 for the true class
    slack = hinge.masked_fill(onehot.sum(0) == 0, float("-inf")).max(1).values
    return 0.5 * (w ** 2).sum() + c * slack.sum(), -0.5 * (w ** 2).sum() + (alpha * onehot).sum()


@pytest.mark.parametrize("c", [0.1, 10.0])  # soft margin (C bounds alpha) and nearly hard margin
def test_the_dual_solution_is_feasible_and_closes_the_duality_gap(c):
    x, onehot = svm_problem()
    alpha = svm.dual(x @ x.T, onehot, c, iterations=300)
    assert (alpha <= c * onehot + 1e-12).all() and alpha.sum(1).abs().max() < 1e-12  # the dual's constraints
    assert (alpha[:, 3:] == 0).all()  # no weight on the absent classes
    # weak duality: primal >= dual for every feasible alpha, equal exactly at the optimum (the KKT conditions)
    primal, dual = primal_and_dual(x, onehot, alpha, c)
    assert primal - dual < 1e-9 * primal
    early_primal, early_dual = primal_and_dual(x, onehot, svm.dual(x @ x.T, onehot, c, iterations=3), c)
    assert early_primal - early_dual > 1e-3 * early_primal  # three steps are not there yet: the check can fail


def test_logits_score_each_present_class_with_the_svm_weights():
    params, (sx, sy, qx, _) = linear_task()
    cfg = MetaOptNetSVMConfig(svm_iterations=20)
    logits = svm.logits(linear, {**params, r2d2.SCALE: torch.tensor(2.0)}, sx, sy, qx, cfg)
    x = linear(params, sx)
    alpha = svm.dual(x @ x.T, torch.nn.functional.one_hot(sy, 6).double(), cfg.c, 20)
    torch.testing.assert_close(logits[:, :3], 2.0 * linear(params, qx) @ (x.T @ alpha)[:, :3])
    assert torch.isinf(logits[:, 3:]).all() and (logits[:, 3:] < 0).all()


@pytest.mark.parametrize("iterations", [4, 250])  # early-stopped, and converged (the SVM's own derivative)
def test_meta_gradient_matches_finite_differences(iterations):
    params, task = linear_task()
    cfg = MetaOptNetSVMConfig(svm_iterations=iterations, c=1.0)

    def loss(w, scale):
        return svm.ALGORITHM.meta_loss(linear, {"w": w, r2d2.SCALE: scale}, *task, cfg, CE)[0]

    # along a random direction of (w, scale): autograd against central differences (two solves, not gradcheck's 26)
    inputs = (params["w"].clone().requires_grad_(), torch.tensor(0.5, dtype=torch.float64, requires_grad=True))
    direction = [torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=t.dtype) for t in inputs]
    analytic = sum((g * d).sum() for g, d in zip(torch.autograd.grad(loss(*inputs), inputs), direction))
    with torch.no_grad():
        ahead, behind = (loss(*[t + sign * 1e-6 * d for t, d in zip(inputs, direction)]) for sign in (1, -1))
    assert analytic.item() == pytest.approx(((ahead - behind) / 2e-6).item(), rel=1e-6)


def test_vmap_over_tasks_equals_the_loop():
    assert_vmap_equals_loop(svm.ALGORITHM, MetaOptNetSVMConfig(svm_iterations=10))


def test_load_learner_adapts_and_predicts_for_any_number_of_ways(tmp_path):
    run(image_config(["algo=metaoptnet_svm", "train.iterations=10", "eval.episodes=10"], output_dir=tmp_path,
                     noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    for classes in ((60, 61, 62, 63, 64), (60, 61, 62)):  # meta-trained 5-way; chance 1/5 and 1/3
        assert few_shot_accuracy(learner, classes) > 0.6, classes


@pytest.mark.parametrize("override, message", [
    ("algo.svm_iterations=0", "algo.svm_iterations must be > 0, got 0; set e.g. algo.svm_iterations=1"),
    ("algo.c=0", "algo.c must be > 0, got 0.0; set e.g. algo.c=0.01"),
    ("algo.scale=-1", "algo.scale must be > 0, got -1.0; set e.g. algo.scale=0.01"),
])
def test_bad_settings_are_refused_in_one_line(override, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        build_components(image_config(["algo=metaoptnet_svm", override]))
