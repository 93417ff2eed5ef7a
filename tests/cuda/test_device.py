"""metarun on the GPU: meta-steps and sampling never wait for the device, checkpoints move between the GPU and
the CPU, ``load_learner`` runs on the GPU, and a 20-way evaluation chunk fits in its memory."""

import contextlib
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metarun import load_learner
from metarun.algos.objectives import OBJECTIVES
from metarun.data.files.store import ImageStore
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.mapping.task_parallel import meta_backward
from metarun.models.network import build_network, functional_forward
from metarun.runner import distributed, train
from metarun.runner.checkpoint import load_checkpoint
from metarun.runner.components import algorithm_of, build_components
from metarun.runner.evaluate import evaluate
from metarun.runner.train import run
from tests.conftest import compose_config
from tests.cuda.conftest import DEVICE, device_images
from tests.synthetic import image_config, make_images

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("algo", ["metasgd", "mamlpp"])
def test_learned_inner_learning_rates_live_on_the_device(device, algo):
    # Meta-SGD's and MAML++'s meta/lr tensors are created beside the network, not on the CPU's default device
    cfg = compose_config([f"algo={algo}"])
    algorithm, settings = algorithm_of(cfg)
    _, params = build_network(cfg, algorithm, settings, (1,), 1, device)
    assert any(name.startswith("meta/lr/") for name in params)
    assert {p.device for p in params.values()} == {torch.empty(0, device=device).device}


@contextlib.contextmanager
def no_host_sync(device):
    """Inside the block, any operation that makes the host wait for the GPU raises (on CUDA; elsewhere no check)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_vmapped_meta_step_never_waits_for_the_gpu(device, images_on_device):
    cfg = image_config(["algo=maml", f"hardware.device={device}", "hardware.task_parallel=vmap"])
    parts = build_components(cfg)
    batch = parts.source.sample(4, torch.Generator(device=parts.device).manual_seed(0))
    task = lambda p, *t: parts.algorithm.meta_loss(parts.forward, p, *t, parts.settings, parts.objective)  # noqa: E731

    def step():
        return meta_backward(task, parts.params, batch, "vmap", lambda loss: loss / batch.num_tasks, parts.autocast)

    step()  # the first step creates the cuBLAS/cuDNN handles and the allocator's blocks
    with no_host_sync(parts.device):
        losses, _ = step()
    assert torch.isfinite(losses).all() and all(torch.isfinite(p.grad).all() for p in parts.params.values())


@pytest.mark.parametrize("task_parallel, overrides", [("vmap", []), ("loop", ["hardware.vmap_chunk=2"]),
                                                       ("vmap", ["hardware.vmap_chunk=2", "train.grad_clip=1.0"])])
def test_a_whole_training_iteration_never_waits_for_the_gpu(device, images_on_device, tmp_path, task_parallel,
                                                           overrides):
    # the draw, the meta-step, the clip, the optimiser and schedule steps and the device-side loss tracking: the
    # loop in train.train reads back only on log, validation and checkpoint steps
    cfg = image_config(["algo=maml", f"hardware.device={device}", f"hardware.task_parallel={task_parallel}",
                        "train.meta_batch_size=4", *overrides], output_dir=tmp_path)
    parts = build_components(cfg)
    state, group = train.TrainState.create(cfg, parts.params, parts.device), distributed.Group()
    settings, train_task, _ = train.task_functions(parts, cfg)
    means = train.TrainMeans(parts.device, state, OmegaConf.to_object(cfg.train))

    def iteration(number):
        settings.at(number)
        whole = parts.source.sample(4, state.generator)
        loss, metric = train.meta_step(parts, state, train_task, whole, 4, cfg.train.grad_clip, group)
        state.scheduler.step()
        means.add(group.sum(torch.stack([loss, metric])), number)

    iteration(1)  # the first creates the cuBLAS/cuDNN handles, the allocator's blocks and the optimiser's state
    with no_host_sync(parts.device):
        iteration(2)
        iteration(3)
    assert means.take(3, parts.objective.metric_name)["train/loss"] > 0


def test_episodes_are_drawn_on_the_device_without_waiting_for_it(device):
    tasks = device_images(OmegaConf.create({"noise": 30.0, "ways": 5, "shots": 1, "queries": 5}), device)
    generator = torch.Generator(device=device).manual_seed(0)
    tasks.sample(8, generator)  # the first draw finds the eligible classes (a nonzero, which waits), once
    with no_host_sync(device):
        batch = tasks.sample(8, generator)
    assert tasks.samplers["train"].store.images.device.type == device.type
    assert all(t.device.type == device.type for t in [*batch.tensors(), *tasks.episodes("test", 0, 0, 3).tensors()])


class Killed(Exception):
    """A job killed mid-run."""


@pytest.mark.parametrize("first, then", [(DEVICE.type, "cpu"), ("cpu", DEVICE.type)], ids=["gpu-to-cpu", "cpu-to-gpu"])
def test_a_checkpoint_resumes_on_the_other_device(tmp_path, images_on_device, monkeypatch, first, then):
    budget = ["algo=maml", "algo.inner_lr=0.1", "algo.test_inner_steps=5", "train.iterations=30",
              "train.checkpoint_every=10"]
    real_meta_backward = meta_backward
    calls = []

    def killed_at_15(*args):
        calls.append(1)
        if len(calls) == 15:  # mid-way between checkpoints: last.pt is the one of iteration 10
            raise Killed
        return real_meta_backward(*args)

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr("metarun.runner.train.meta_backward", killed_at_15)
        run(image_config([*budget, f"hardware.device={first}"], output_dir=tmp_path, noise=30.0))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").iteration == 10
    run(image_config([*budget, f"hardware.device={then}", "resume=true"], output_dir=tmp_path, noise=30.0))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["iterations"] == 30 and results["test/acc"] > 0.6, results
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert all(p.device.type == then for p in last["params"].values())


def test_load_learner_on_the_gpu_predicts_as_on_the_cpu(tmp_path, device, images_on_device):
    # TF32 off, as the run leaves it: the learners' logits are compared to fp32 tolerance
    run(image_config(["algo=maml", "algo.inner_lr=0.1", "algo.test_inner_steps=5", "train.iterations=20",
                      f"hardware.device={device}", "hardware.tf32=false"], output_dir=tmp_path, noise=30.0))
    best = tmp_path / "checkpoints" / "best.pt"
    on_device, on_cpu = load_learner(best, device=str(device)), load_learner(best, device="cpu")
    assert all(p.device.type == device.type for p in on_device.params.values())
    images = make_images(30.0)  # held-out classes 60-64: one support image each, six queries
    support, labels = images[60:65, 0], [f"glyph-{c}" for c in range(60, 65)]
    query, truth = images[60:65, 1:7].flatten(0, 1), [label for label in labels for _ in range(6)]
    logits = on_device.adapt(support, labels).logits(query)
    assert logits.device.type == device.type
    torch.testing.assert_close(logits.cpu(), on_cpu.adapt(support, labels).logits(query), rtol=1e-4, atol=1e-4)
    predicted = on_device.adapt(support, labels).predict(query)
    assert np.mean([p == t for p, t in zip(predicted, truth)]) > 0.6  # chance is 0.2


def random_omniglot(device, ways: int) -> ImageTasks:
    """Episodes of Omniglot's shape (1x28x28, 15 queries) from 40 classes of random pixels, on ``device``."""
    images = torch.randint(0, 256, (40 * 20, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    store = ImageStore(images, torch.arange(0, 40 * 20 + 1, 20), tuple(str(c) for c in range(40)))
    return ImageTasks({"test": store, "train": store}, ways, 1, 15, device, ([0.5], [0.25]))


@pytest.mark.parametrize("experiment", ["maml_omniglot_20w1s", "protonet_omniglot_5w1s"])
def test_a_20_way_evaluation_chunk_fits_in_gpu_memory(device, experiment):
    # the preset's network and test-time inner steps, 20-way, one chunk of eval.batch_size episodes under vmap
    cfg = compose_config([f"experiment={experiment}", "eval.ways=20"])
    algorithm, settings = algorithm_of(cfg)
    model, params = build_network(cfg, algorithm, settings, (1, 28, 28), cfg.dataset.ways, device)
    forward = functional_forward(model)
    task = lambda p, *t: algorithm.evaluate_task(forward, p, *t, settings, OBJECTIVES["classification"])  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = evaluate(task, params, random_omniglot(device, 20), "test", cfg.eval.batch_size, cfg.eval, "vmap", "acc")
    assert results["test/nonfinite"] == 0 and 0.0 <= results["test/acc"] <= 1.0
    if device.type == "cuda":
        # half the device at most, so the training state fits beside it
        peak, total = torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
        assert peak < total / 2, f"{peak / 2**30:.1f} GiB of {total / 2**30:.0f} GiB"
