"""Mapping tasks with vmap and with a loop gives the same losses and meta-gradients; auto keeps the faster."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.config import MAMLConfig, SinusoidConfig
from metarun.data.sinusoid import SinusoidTasks
from metarun.engine import Setup, functional_forward, map_tasks, tune
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
    from metarun.engine import in_context, support_context
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
    parts = Setup(None, OBJECTIVES["regression"], maml, model, functional_forward(model), params,
                  torch.device("cpu"), mode, hardware)
    source = SinusoidTasks(OmegaConf.structured(SinusoidConfig), torch.device("cpu"))
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=2))
    task = lambda p, *t: maml.meta_loss(parts.forward, p, *t, cfg, OBJECTIVES["regression"])  # noqa: E731
    return parts, task, lambda: source.sample(4, torch.Generator().manual_seed(0))


# vmap must be clearly faster (below 0.9 of the loop's time): it holds every task's graph at once
@pytest.mark.parametrize("clock, chosen", [([0, 4, 10, 11], "loop"), ([0, 1, 10, 14], "vmap"), ([0, 19, 20, 40], "loop")])
def test_auto_keeps_the_mode_whose_timed_meta_step_is_shorter(clock, chosen):
    parts, task, sample = _tiny_setup()
    ticks = iter(clock)  # vmap's timed steps run first: it takes clock[1] - clock[0], loop clock[3] - clock[2]
    rng = torch.get_rng_state()
    seconds = tune(parts, task, parts.params, sample, timer=lambda: next(ticks))
    assert parts.mode == chosen
    assert seconds == {"vmap": (clock[1] - clock[0]) / 2, "loop": (clock[3] - clock[2]) / 2}
    # the timing leaves no trace: no gradients, the random stream where it was
    assert all(p.grad is None for p in parts.params.values())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_set_mode_is_not_timed():
    parts, task, sample = _tiny_setup("loop")
    assert tune(parts, task, parts.params, sample, timer=None) == {} and parts.mode == "loop"
