"""Mapping tasks with vmap and with a loop gives the same losses and meta-gradients."""

import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.config import MAMLConfig, SinusoidConfig
from metarun.data.sinusoid import SinusoidTasks
from metarun.engine import functional_forward, map_tasks
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
