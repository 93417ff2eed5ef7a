"""R2-D2: the Woodbury solve against the primal ridge regression, the meta-gradient against finite differences,
vmap against the loop, what a user gets from it (load_learner with any number of ways) and the one-line errors."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from metarun import load_learner
from metarun.algos import r2d2
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import R2D2Config
from metarun.models import without_head
from metarun.models.network import functional_forward
from metarun.runner.components import build_components
from metarun.runner.train import run
from tests.algos.shared import few_shot_accuracy
from tests.conftest import compose_config
from tests.synthetic import SyntheticImages, TinyCNN, image_config

CE = OBJECTIVES["classification"]


def linear_task(seed=0):
    """A linear embedding (4 -> 3) and a 3-way 2-shot task in float64: 6 support columns, the last 3 absent."""
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64)}
    sx, qx = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    return params, (sx, torch.tensor([0, 0, 1, 1, 2, 2]), qx, torch.tensor([0, 1, 2, 0, 1]))


def linear(params, x):
    return x @ params["w"]


def test_logits_are_the_scaled_primal_ridge_regression_with_a_bias():
    params, (sx, sy, qx, _) = linear_task()
    scale, ridge = 3.0, 0.7
    for cfg, extra in ((R2D2Config(), {r2d2.LOG_LAMBDA: torch.tensor(math.log(ridge), dtype=torch.float64)}),
                       (R2D2Config(learn_lambda=False, ridge_lambda=ridge), {})):
        logits = r2d2.logits(linear, {**params, r2d2.SCALE: torch.tensor(scale), **extra}, sx, sy, qx, cfg)
        # min_W mean_n ||[x_n, 1] W - y_n||^2 + lambda ||W||^2 over the 3 classes, in the primal (4 x 4 solve)
        x, y = torch.cat([linear(params, sx), torch.ones(6, 1)], 1), torch.nn.functional.one_hot(sy).double()
        weights = torch.linalg.solve(x.T @ x + 6 * ridge * torch.eye(4), x.T @ y)
        expected = scale * torch.cat([linear(params, qx), torch.ones(5, 1)], 1) @ weights
        torch.testing.assert_close(logits[:, :3], expected)
        assert torch.isinf(logits[:, 3:]).all() and (logits[:, 3:] < 0).all()


def test_meta_parameters_start_at_the_settings():
    model = without_head(TinyCNN((1, 12, 12), 5))
    params = r2d2.meta_params(model, R2D2Config(scale=2.5, ridge_lambda=4.0))
    assert params[r2d2.SCALE].item() == 2.5 and params[r2d2.LOG_LAMBDA].exp().item() == pytest.approx(4.0)
    assert r2d2.LOG_LAMBDA not in r2d2.meta_params(model, R2D2Config(learn_lambda=False))


def test_meta_gradient_matches_finite_differences():
    params, task = linear_task()

    def loss(w, scale, log_lambda):
        meta = {"w": w, r2d2.SCALE: scale, r2d2.LOG_LAMBDA: log_lambda}
        return r2d2.meta_loss(linear, meta, *task, R2D2Config(), CE)[0]

    inputs = (params["w"], torch.tensor(2.0, dtype=torch.float64), torch.tensor(-0.5, dtype=torch.float64))
    assert torch.autograd.gradcheck(loss, tuple(t.clone().requires_grad_() for t in inputs))


def assert_vmap_equals_loop(algorithm, cfg, precision=None):
    """``algorithm``'s meta-losses of 4 synthetic tasks and their gradient: vmapped as looped, and float32 (under
    ``precision``'s autocast too: the backbone then embeds in bf16, and rounds batched convolutions differently)."""
    source = SyntheticImages(OmegaConf.create({"noise": 60.0, "ways": 3, "shots": 2, "queries": 4}),
                             torch.device("cpu"))
    batch = source.episodes("test", 0, 0, 4)
    model = without_head(TinyCNN((1, 12, 12), 5))
    forward, params = functional_forward(model), algorithm.meta_params(model, cfg)

    def loss(p, *task):
        return algorithm.meta_loss(forward, p, *task, cfg, CE)[0]

    with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
        looped = torch.stack([loss(params, *task) for task in zip(*batch.tensors())])
        mapped = torch.vmap(loss, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if precision else {}
    torch.testing.assert_close(mapped, looped, **tolerance)
    assert looped.dtype == torch.float32 and torch.isfinite(looped).all()
    for a, b in zip(torch.autograd.grad(looped.mean(), list(params.values())),
                    torch.autograd.grad(mapped.mean(), list(params.values()))):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("precision", [None, torch.bfloat16])  # the solve runs in float32 under bf16 autocast
def test_vmap_over_tasks_equals_the_loop(precision):
    assert_vmap_equals_loop(r2d2.ALGORITHM, R2D2Config(), precision)


def test_load_learner_adapts_and_predicts_for_any_number_of_ways(tmp_path):
    run(image_config(["algo=r2d2", "train.iterations=10", "eval.episodes=10"], output_dir=tmp_path, noise=30.0))
    learner = load_learner(tmp_path / "checkpoints" / "best.pt")
    for classes in ((60, 61, 62, 63, 64), (60, 61, 62)):  # meta-trained 5-way; chance 1/5 and 1/3
        assert few_shot_accuracy(learner, classes) > 0.6, classes


@pytest.mark.parametrize("override, message", [
    ("algo.ridge_lambda=0", "algo.ridge_lambda must be > 0, got 0.0; set e.g. algo.ridge_lambda=0.01"),
    ("algo.scale=-1", "algo.scale must be > 0, got -1.0; set e.g. algo.scale=0.01"),
])
def test_bad_settings_are_refused_in_one_line(override, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        build_components(image_config(["algo=r2d2", override]))


def test_regression_datasets_are_refused_in_one_line():
    with pytest.raises(ValueError, match="algo=r2d2 does not support regression .dataset=sinusoid.; pick a class"):
        build_components(compose_config(["algo=r2d2", "hardware.num_threads=1"]))
