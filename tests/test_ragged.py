"""Ragged meta-batches (variable ways and shots, padded to the largest): every mapping gives each task the loss, metric
and meta-gradient of the same task run alone without padding."""

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import anil, maml, protonet
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import ANILConfig, MAMLConfig, ProtoNetConfig
from metarun.data.tasks import PAD, TaskBatch
from metarun.mapping.ragged import episode_forward
from metarun.mapping.task_parallel import meta_backward
from metarun.models.conv4 import Conv4
from metarun.models.mlp import MLP
from metarun.models.network import functional_forward

OBJECTIVE = OBJECTIVES["classification"]
HEAD = 6  # the fixed head's outputs: the largest way count


def episode(ways: int, shots: list, queries: int, seed: int) -> TaskBatch:
    """One task of ``ways`` classes with ``shots[c]`` support images of class c, class-major."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, 3, 12, 12, generator=g)

    def images(counts):
        labels = torch.repeat_interleave(torch.arange(ways), torch.tensor(counts))
        return (centres[labels] + 3.0 * torch.randn(len(labels), 3, 12, 12, generator=g))[None], labels[None]

    return TaskBatch(*images(shots), *images([queries] * ways))


def ragged_batch() -> TaskBatch:
    return TaskBatch.cat([episode(3, [1, 2, 1], 2, 0), episode(6, [2, 1, 1, 3, 1, 1], 1, 1), episode(2, [4, 4], 3, 2)])


def test_a_ragged_batch_pads_each_set_to_the_largest_and_a_task_comes_back_without_its_padding():
    batch = ragged_batch()
    assert batch.padded and batch.support_x.shape[:2] == (3, 9) and batch.query_x.shape[:2] == (3, 6)
    assert (batch.support_y[0, 4:] == PAD).all() and (batch.support_y[1] != PAD).all()
    alone = episode(3, [1, 2, 1], 2, 0)
    for got, want in zip(batch.task(0), (t[0] for t in alone.tensors())):
        torch.testing.assert_close(got, want)


SETTINGS = {
    "protonet": (protonet, ProtoNetConfig(), False),
    "maml-learned-head": (maml, MAMLConfig(inner_steps=2, inner_lr=0.1), True),
    "maml-zero-head": (maml, MAMLConfig(inner_steps=1, inner_lr=0.1, head_init="zero"), True),
    "fo-proto-maml": (maml, MAMLConfig(inner_steps=2, inner_lr=0.1, first_order=True, head_init="prototypes"), True),
    "anil-prototypes": (anil, ANILConfig(inner_steps=1, inner_lr=0.1, head_init="prototypes"), True),
}


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("mapping", ["vmap", "loop", "threads"])
def test_each_mapping_gives_a_padded_task_the_loss_and_meta_gradient_of_the_task_alone(name, mapping):
    module, settings, head = SETTINGS[name]
    torch.manual_seed(0)
    model = Conv4((3, 12, 12), HEAD, width=8, depth=2)
    if not head:
        from metarun.models import without_head
        model = without_head(model)
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(settings)
    width = HEAD if head else None
    task_fn = lambda p, *t: module.meta_loss(episode_forward(forward, *t, head_width=width), p, *t, cfg,  # noqa: E731
                                             OBJECTIVE)
    batch = ragged_batch()
    losses, metrics = meta_backward(task_fn, params, batch, mapping, lambda loss: loss)
    padded = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    # each task alone, at its own size, with no padding anywhere and the plain forward
    alone = [episode(3, [1, 2, 1], 2, 0), episode(6, [2, 1, 1, 3, 1, 1], 1, 1), episode(2, [4, 4], 3, 2)]
    expected = []
    for task in alone:
        tensors = [t[0] for t in task.tensors()]
        loss, metric = module.meta_loss(episode_forward(forward, *tensors, head_width=width), params, *tensors, cfg,
                                        OBJECTIVE)
        loss.backward()
        expected.append((loss.detach(), metric))
    torch.testing.assert_close(losses, torch.stack([loss for loss, _ in expected]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics, torch.stack([metric for _, metric in expected]))
    assert padded.keys() == {n for n, p in params.items() if p.grad is not None}
    # float32 sums in other orders: differences scale with the gradient's largest entries (a convolution's bias
    # before batch norm has a gradient of zero up to that rounding)
    scale = max(float(p.grad.abs().max()) for p in params.values() if p.grad is not None)
    for n, p in params.items():
        if p.grad is not None:
            torch.testing.assert_close(padded[n], p.grad, rtol=1e-4, atol=1e-5 * scale, msg=f"{name} {mapping}: {n}")


def test_the_fixed_head_scores_only_the_episode_s_classes():
    torch.manual_seed(0)
    model = Conv4((3, 12, 12), HEAD, width=8, depth=2)
    forward, params = functional_forward(model), dict(model.named_parameters())
    sx, sy, qx, qy = (t[0] for t in episode(3, [1, 1, 1], 1, 0).tensors())
    logits = episode_forward(forward, sx, sy, qx, qy, head_width=HEAD)(params, qx)
    assert torch.isfinite(logits[:, :3]).all() and (logits[:, 3:] == float("-inf")).all()


def test_a_prototype_head_scores_as_the_prototype_classifier_before_any_inner_step():
    """Proto-MAML's head (2·p_c, -|p_c|²) gives logits that differ from ProtoNet's -|e - p_c|² by |e|², the same for
    every class of a query: the same softmax, so the same loss."""
    torch.manual_seed(0)
    model = Conv4((3, 12, 12), HEAD, width=8, depth=2)
    forward, params = functional_forward(model), dict(model.named_parameters())
    sx, sy, qx, qy = (t[0] for t in episode(4, [2, 1, 3, 2], 2, 3).tensors())
    cfg = OmegaConf.structured(MAMLConfig(head_init="prototypes"))
    head = maml.with_task_head(forward, params, sx, sy, cfg)
    logits = episode_forward(forward, sx, sy, qx, qy, head_width=HEAD)(head, qx)[:, :4]
    proto = protonet.logits(forward.embed, params, sx, sy, qx, ProtoNetConfig(embedding_pass="separate"))[:, :4]
    torch.testing.assert_close(torch.log_softmax(logits, -1), torch.log_softmax(proto, -1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits, proto)  # not the same numbers: the same classifier


@pytest.mark.parametrize("first_order", [True, False])
def test_a_prototype_head_adapts_alike_in_the_loop_and_under_vmap(first_order):
    """The inner gradient of each parameter is its own: the body's does not also flow through the head computed from
    it (torch.func.grad's and the official code's reading), whichever way the task runs."""
    torch.manual_seed(0)
    # a small MLP on faint inputs: embeddings near zero, so the prototype head's support loss is far from zero
    model = MLP((3, 12, 12), HEAD, [8])
    forward, params = functional_forward(model), dict(model.named_parameters())
    cfg = OmegaConf.structured(MAMLConfig(inner_steps=1, inner_lr=0.5, first_order=first_order, head_init="prototypes"))
    tasks = [episode(3, [4, 4, 4], 3, seed) for seed in (5, 6)]
    batch = TaskBatch.cat([TaskBatch(0.05 * t.support_x, t.support_y, 0.05 * t.query_x, t.query_y) for t in tasks])
    sx, sy = batch.support_x[0], batch.support_y[0]
    head = maml.with_task_head(forward, params, sx, sy, cfg)
    assert OBJECTIVE.loss(forward(head, sx), sy) > 0.05  # the support loss moves the head: inner steps matter
    task_fn = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVE)  # noqa: E731
    results = {}
    for mapping in ("loop", "vmap"):
        losses, _ = meta_backward(task_fn, params, batch, mapping, lambda loss: loss)
        results[mapping] = losses, {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
        for p in params.values():
            p.grad = None
    torch.testing.assert_close(results["loop"][0], results["vmap"][0], rtol=1e-4, atol=1e-5)
    scale = max(float(g.abs().max()) for g in results["loop"][1].values())
    for name, gradient in results["loop"][1].items():
        torch.testing.assert_close(results["vmap"][1][name], gradient, rtol=1e-4, atol=1e-5 * scale, msg=name)
