"""Mapping tasks with vmap, a loop or threads gives the same losses and meta-gradients; auto keeps the fastest."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.config import MAMLConfig, SinusoidConfig
from metarun.data.sinusoid import SinusoidTasks
from metarun import task_parallel
from metarun.components import Components
from metarun.data.tasks import TaskBatch
from metarun.network import functional_forward
from metarun.task_parallel import fastest, map_tasks, meta_backward, tune
from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from metarun.objectives import OBJECTIVES


def test_vmap_and_loop_give_the_same_second_order_meta_gradient():
    torch.manual_seed(0)
    model = MLP((1,), 1, [40, 40])
    forward, params = functional_forward(model), dict(model.named_parameters())
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    batch = source.sample(8, torch.Generator().manual_seed(0))
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["regression"])  # noqa: E731
    results = {}
    for mode in ("vmap", "loop"):
        losses, metrics = map_tasks(task, params, batch, mode)
        assert losses.shape == metrics.shape == (8,)
        results[mode] = (losses, torch.autograd.grad(losses.mean(), list(params.values())))
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["vmap"][1], results["loop"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inductive_scoring_normalises_each_query_with_the_support_set_and_itself_only():
    from metarun.models.batchnorm import in_context, support_context
    from tests.synthetic import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN((1, 12, 12), 3, width=4)
    forward, params = functional_forward(model), dict(model.named_parameters())
    support, query = torch.randn(6, 1, 12, 12), torch.randn(4, 1, 12, 12)
    scored = support_context(forward, 3)(params, in_context(support, query))
    by_hand = torch.stack([forward(params, torch.cat([support, q[None]]))[-1] for q in query])
    torch.testing.assert_close(scored, by_hand)
    # no leak between queries: changing the others leaves query 0's output as it was
    others = torch.cat([query[:1], torch.randn(3, 1, 12, 12)])
    torch.testing.assert_close(support_context(forward, 3)(params, in_context(support, others))[0], scored[0])
    assert not torch.allclose(forward(params, query)[0], forward(params, others)[0])  # transductive would leak
    # support inputs pass through
    torch.testing.assert_close(support_context(forward, 3)(params, support), forward(params, support))


def _tiny_setup(mode="auto"):
    torch.manual_seed(0)
    model = MLP((1,), 1, [8])
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    hardware = SimpleNamespace(precision="fp32", compile=False)
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    parts = Components(None, OBJECTIVES["regression"], maml.ALGORITHM, cfg, model, functional_forward(model), params,
                       torch.device("cpu"), mode, hardware)
    assert task_parallel.MODES == ("vmap", "loop", "threads")
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    task = lambda p, *t: maml.meta_loss(parts.forward, p, *t, cfg, OBJECTIVES["regression"])  # noqa: E731
    return parts, task, lambda: source.sample(4, torch.Generator().manual_seed(0))


# vmap must be clearly faster (below 0.9 of the best other mode's time): it holds every task's graph at once
@pytest.mark.parametrize("seconds, chosen", [({"vmap": 2.0, "loop": 0.5, "threads": 0.3}, "threads"),
                                             ({"vmap": 0.5, "loop": 2.0, "threads": 1.0}, "vmap"),
                                             ({"vmap": 0.95, "loop": 1.0, "threads": 1.2}, "loop"),
                                             ({"vmap": 2.0, "loop": 1.0}, "loop")])
def test_auto_keeps_the_fastest_mode_and_vmap_only_when_clearly_faster(seconds, chosen):
    assert fastest(seconds) == chosen


def test_tune_times_every_mode_and_leaves_no_trace(monkeypatch):
    monkeypatch.setattr("metarun.hardware.available_cores", lambda: 2)  # threads is a candidate with 2 cores
    parts, task, sample = _tiny_setup()
    threads = torch.get_num_threads()
    ticks = iter([0, 4, 10, 11, 20, 22])  # each mode's two timed steps, in MODES' order
    rng = torch.get_rng_state()
    seconds = tune(parts, task, parts.params, sample, timer=lambda: next(ticks))
    assert seconds == {"vmap": 2.0, "loop": 0.5, "threads": 1.0} and parts.task_parallel == "loop"
    assert torch.get_num_threads() == parts.threads == threads  # the loop's thread count is back
    # the timing leaves no trace: no gradients, the random stream where it was
    assert all(p.grad is None for p in parts.params.values())
    assert torch.equal(torch.get_rng_state(), rng)


def test_one_core_leaves_threads_out_and_the_gpu_never_has_it(monkeypatch):
    monkeypatch.setattr("metarun.hardware.available_cores", lambda: 1)
    parts, _, _ = _tiny_setup()
    assert parts.auto_choices() == ("vmap", "loop")
    monkeypatch.setattr("metarun.hardware.available_cores", lambda: 4)
    assert parts.auto_choices() == ("vmap", "loop", "threads")
    parts.device = torch.device("cuda")
    assert parts.auto_choices() == ("vmap", "loop")


def _conv_meta_batch(tasks=6):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3).repeat(2).expand(tasks, -1).contiguous()
    return TaskBatch(torch.randn(tasks, 6, 1, 16, 16, generator=g), labels,
                     torch.randn(tasks, 6, 1, 16, 16, generator=g), labels)


@pytest.mark.parametrize("norm", ["batch", "running"])
def test_threads_give_the_loops_meta_gradient_bit_for_bit(monkeypatch, norm):
    monkeypatch.setattr("metarun.hardware.available_cores", lambda: 3)
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=8, norm=norm)
    forward = functional_forward(model)
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2, inner_lr=0.3))
    task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    batch, threads, results = _conv_meta_batch(), torch.get_num_threads(), {}
    torch.set_num_threads(1)  # the loop on one thread, as every worker runs: the same kernels, the same sums
    try:
        for mode in ("loop", "threads"):
            params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
            losses, metrics = meta_backward(task, params, batch, mode, lambda loss: loss / 6)
            results[mode] = losses, metrics, [p.grad for p in params.values()]
    finally:
        torch.set_num_threads(threads)
    assert all(g is not None for g in results["threads"][2])
    for a, b in zip(results["loop"], results["threads"]):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_threads_score_episodes_as_the_loop_with_the_callers_grad_mode_and_eval_mode(monkeypatch):
    monkeypatch.setattr("metarun.hardware.available_cores", lambda: 2)
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=8, norm="running")
    forward, params = functional_forward(model), dict(model.named_parameters())
    model.get_submodule("1").running_mean.fill_(0.5)  # eval mode's normalisation differs from training's
    cfg = OmegaConf.structured(MAMLConfig(test_inner_steps=2, inner_lr=0.3))
    task = lambda p, *t: maml.evaluate_task(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
    batch = _conv_meta_batch(4)
    model.eval()
    try:
        with torch.no_grad():
            curves = {mode: map_tasks(task, params, batch, mode) for mode in ("loop", "threads")}
    finally:
        model.train()
    assert curves["threads"].shape == (4, 3) and not curves["threads"].requires_grad
    torch.testing.assert_close(curves["threads"], curves["loop"])


def test_bf16_autocast_reaches_the_worker_threads(monkeypatch):
    monkeypatch.setattr("metarun.hardware.available_cores", lambda: 2)
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 3, width=8)
    forward, params = functional_forward(model), dict(model.named_parameters())
    logits = lambda p, sx, sy, qx, qy: forward(p, qx)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = map_tasks(logits, params, _conv_meta_batch(2), "threads")
    assert out.dtype == torch.bfloat16


def test_a_set_mode_is_not_timed():
    parts, task, sample = _tiny_setup("loop")
    assert tune(parts, task, parts.params, sample, timer=None) == {} and parts.task_parallel == "loop"
