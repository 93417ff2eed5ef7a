"""What the algorithm tests share: scoring a loaded learner on synthetic meta-test classes, and the parity of the
task-parallel modes with the per-task loop."""

import numpy as np
import torch

from metarun.data.tasks import TaskBatch
from metarun.network import functional_forward
from metarun.objectives import OBJECTIVES
from metarun.task_parallel import map_tasks
from tests.synthetic import make_images

CE = OBJECTIVES["classification"]


def few_shot_accuracy(learner, classes, shots=2, noise=30.0) -> float:
    """``learner``'s accuracy on a task of the synthetic meta-test ``classes`` (6 queries each), with string labels."""
    images = make_images(noise)
    support = torch.stack([images[c, i] for c in classes for i in range(shots)])
    predicted = learner.adapt(support, [f"glyph-{c}" for c in classes for _ in range(shots)]).predict(
        torch.stack([images[c, i] for c in classes for i in range(shots, shots + 6)]))
    return float(np.mean([p == f"glyph-{c}" for p, c in zip(predicted, [c for c in classes for _ in range(6)])]))


def assert_mapped_equals_loop(algorithm, cfg, model, mode: str, params=None) -> dict:
    """Map 3 random 3-way 2-shot tasks in ``mode`` and in a loop: the meta-losses, metrics, every meta-gradient, the
    evaluation curves and the predictions agree. Returns the loop's outputs by name."""
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(3, 2)
    batch = TaskBatch(torch.randn(3, 6, 1, 12, 12), labels, torch.randn(3, 6, 1, 12, 12), labels)
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

    looped, mapped = outputs("loop"), outputs(mode)
    for key, reference in looped.items():
        torch.testing.assert_close(mapped[key], reference, rtol=1e-4, atol=1e-6, msg=key)
    return looped
