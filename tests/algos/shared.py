"""What the algorithm tests share: scoring a loaded learner on synthetic meta-test classes, and the parity of the
task mappings with the per-task loop."""

import numpy as np
import torch

from metarun.algos.objectives import OBJECTIVES
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models.network import functional_forward
from tests.synthetic import make_images

CE = OBJECTIVES["classification"]


def few_shot_accuracy(learner, classes, shots=2, noise=30.0) -> float:
    """``learner``'s accuracy on a task of the synthetic meta-test ``classes`` (6 queries each), with string labels."""
    images = make_images(noise)
    support = torch.stack([images[c, i] for c in classes for i in range(shots)])
    predicted = learner.adapt(support, [f"glyph-{c}" for c in classes for _ in range(shots)]).predict(
        torch.stack([images[c, i] for c in classes for i in range(shots, shots + 6)]))
    return float(np.mean([p == f"glyph-{c}" for p, c in zip(predicted, [c for c in classes for _ in range(6)])]))


def assert_mapped_equals_loop(algorithm, cfg, model, mapping: str, params=None) -> dict:
    """Map 3 random 3-way 2-shot tasks in ``mapping`` and in a loop: the meta-losses, metrics, every meta-gradient, the
    evaluation curves and the predictions agree. Returns the loop's outputs by name. The tasks take the model's
    dtype (float64 where a solve amplifies float32's rounding past the tolerance, as iMAML's CG does)."""
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(3, 2)
    dtype = next(model.parameters()).dtype
    batch = TaskBatch(torch.randn(3, 6, 1, 12, 12, dtype=dtype), labels, torch.randn(3, 6, 1, 12, 12, dtype=dtype),
                      labels)
    forward = functional_forward(model)
    params = algorithm.meta_params(model, cfg) if params is None else params

    def outputs(way):
        losses, metrics = map_tasks(lambda p, *t: algorithm.meta_loss(forward, p, *t, cfg, CE), params, batch, way)
        gradients = torch.autograd.grad(losses.sum(), list(params.values()))
        with torch.no_grad():
            curves = map_tasks(lambda p, *t: algorithm.evaluate_task(forward, p, *t, cfg, CE), params, batch, way)
            scores = map_tasks(lambda p, sx, sy, qx, qy: algorithm.predict(forward, p, sx, sy, qx, cfg, CE),
                               params, batch, way)
        return {"loss": losses, "metric": metrics, "curve": curves, "scores": scores, **dict(zip(params, gradients))}

    looped, mapped = outputs("loop"), outputs(mapping)
    # a gradient that is zero in exact arithmetic (a bias before batch norm) comes back as float rounding of the
    # sums it cancels in, whose size follows the largest gradient: its absolute tolerance scales with that
    largest = max(looped[name].abs().max().item() for name in params)
    for key, reference in looped.items():
        atol = 1e-6 * max(1.0, largest) if key in params else 1e-6
        torch.testing.assert_close(mapped[key], reference, rtol=1e-4, atol=atol, msg=key)
    return looped
