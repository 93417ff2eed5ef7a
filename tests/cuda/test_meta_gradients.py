"""On the GPU the meta-gradient is the one the CPU and the per-task loop compute: vmap, channels-last weights and
torch.compile change how second-order MAML runs, not what it computes (fp32, TF32 off)."""

import shutil

import pytest
import torch

from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import meta_backward
from metarun.runner.components import build_components
from tests.synthetic import SyntheticImages, image_config

pytestmark = pytest.mark.cuda


def meta_step(device, mapping: str = "vmap", overrides=()) -> tuple:
    """Per-task losses and meta-gradient of one second-order MAML meta-step (two inner steps, 4 fixed tasks) on
    ``device``, as the training loop takes it; both on the CPU."""
    cfg = image_config(["algo=maml", "algo.inner_lr=0.1", "algo.inner_steps=2", f"hardware.device={device}",
                        "hardware.tf32=false", f"hardware.task_parallel={mapping}", *overrides])
    parts = build_components(cfg)
    # drawn on the CPU, so every device sees the same tasks
    batch = SyntheticImages(cfg.dataset, torch.device("cpu")).sample(4, torch.Generator().manual_seed(0))
    task = parts.per_task(lambda p, *t: parts.algorithm.meta_loss(parts.forward, p, *t, parts.settings, parts.objective))
    batch = TaskBatch(*(t.to(parts.device) for t in batch.tensors()))
    losses, _ = meta_backward(task, parts.params, batch, mapping, lambda loss: loss, parts.autocast)
    return losses.cpu(), {name: p.grad.cpu() for name, p in parts.params.items()}


def assert_same(ours: tuple, reference: tuple) -> None:
    """Losses and meta-gradients equal to fp32 tolerance.

    The kernels (cuDNN against the CPU's, grouped convolutions under vmap, the loop's fused batch norm) sum in
    different orders and second order compounds it, so gradients are compared up to 1e-4 of their largest
    entry (the biases before batch norm have a true gradient of zero); a wrong term is off by far more.
    """
    (losses, grads), (reference_losses, reference_grads) = ours, reference
    torch.testing.assert_close(losses, reference_losses, rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max().item() for g in reference_grads.values())
    torch.testing.assert_close(grads, reference_grads, rtol=1e-3, atol=1e-4 * scale)


def test_vmap_and_loop_give_the_same_meta_gradient(device, images_on_device):
    assert_same(meta_step(device, "vmap"), meta_step(device, "loop"))


def test_the_meta_gradient_on_the_device_is_the_cpu_one(device, images_on_device):
    assert_same(meta_step(device), meta_step("cpu"))


def test_channels_last_weights_give_the_same_meta_gradient(device, images_on_device):
    assert_same(meta_step(device, overrides=["hardware.channels_last=true"]), meta_step(device))


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile needs a C compiler")
@pytest.mark.parametrize("mapping", ["loop", "vmap"])
def test_compiled_task_gives_the_eager_meta_gradient(device, images_on_device, mapping):
    one_step = ["algo.inner_steps=1"]  # half the graph to compile, the same code paths
    assert_same(meta_step(device, mapping, [*one_step, "hardware.compile=true"]), meta_step(device, mapping, one_step))
