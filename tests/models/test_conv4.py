"""Conv-4: shapes, no BatchNorm buffers, and vmap over tasks equal to the per-task loop."""

import pytest
import torch
from omegaconf import OmegaConf

from metarun.algos import maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import MAMLConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.models import build_model
from metarun.models.batchnorm import BatchNorm2d
from metarun.models.conv4 import Conv4
from metarun.models.network import build_network, channels_last, functional_forward
from metarun.runner.components import algorithm_of
from metarun.utils import hardware
from tests.conftest import compose_config


@pytest.mark.parametrize("shape,max_pool", [((1, 28, 28), True), ((1, 28, 28), False), ((3, 84, 84), True)])
def test_output_shape_and_no_buffers(shape, max_pool):
    model = Conv4(shape, 5, width=8, max_pool=max_pool)
    assert model(torch.randn(7, *shape)).shape == (7, 5)
    assert not list(model.buffers())


def test_built_from_config_and_too_small_images_fail():
    model = build_model(OmegaConf.create({"_target_": "metarun.models.conv4.Conv4", "width": 4}), (1, 28, 28), 20)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 20)
    with pytest.raises(ValueError, match=r"^model.depth=4 max-pools 8x8 images 4 times, to nothing; use "
                                         r"model.depth<=3 or dataset.image_size>=16$"):
        Conv4((1, 8, 8), 5)


@pytest.mark.parametrize("first_order", [True, False])
def test_vmap_over_tasks_equals_the_loop(first_order):
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, width=8)
    forward, params = functional_forward(model), dict(model.named_parameters())
    labels = torch.arange(5).repeat(3, 2)
    batch = TaskBatch(torch.randn(3, 10, 1, 28, 28), labels, torch.randn(3, 10, 1, 28, 28), labels)
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.4, inner_steps=2, first_order=first_order))
    objective = OBJECTIVES["classification"]

    def meta_loss(p, *task):
        return maml.meta_loss(forward, p, *task, cfg, objective)

    results = {}
    for mapping in ("vmap", "loop"):
        losses, accuracies = map_tasks(meta_loss, params, batch, mapping)
        grads = torch.autograd.grad(losses.mean(), list(params.values()))
        results[mapping] = (losses, accuracies, grads)
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["vmap"][1], results["loop"][1])
    for vmapped, looped in zip(results["vmap"][2], results["loop"][2]):
        torch.testing.assert_close(vmapped, looped, rtol=1e-4, atol=1e-5)


def test_batch_norm_matches_torch_with_batch_statistics():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5, requires_grad=True)
    ours, reference = BatchNorm2d(4), torch.nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        for norm in (ours, reference):
            norm.weight.copy_(torch.linspace(0.5, 2, 4))
            norm.bias.copy_(torch.linspace(-1, 1, 4))
    torch.testing.assert_close(ours(x), reference(x))
    weights = torch.randn(6, 4, 5, 5)
    torch.testing.assert_close(torch.autograd.grad((ours(x) * weights).sum(), x)[0],
                               torch.autograd.grad((reference(x) * weights).sum(), x)[0])


def test_channels_last_weights_give_the_same_meta_loss_and_gradients():
    torch.manual_seed(0)
    labels = torch.arange(5).repeat(2, 2)
    batch = TaskBatch(torch.randn(2, 10, 3, 32, 32), labels, torch.randn(2, 10, 3, 32, 32), labels)
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.4, inner_steps=2))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        model = Conv4((3, 32, 32), 5, width=8).to(memory_format=layout)
        forward, params = functional_forward(model), dict(model.named_parameters())
        assert params["0.weight"].is_contiguous(memory_format=layout)
        task = lambda p, *t: maml.meta_loss(forward, p, *t, cfg, OBJECTIVES["classification"])  # noqa: E731
        losses, _ = map_tasks(task, params, batch, "loop")
        results.append((losses, torch.autograd.grad(losses.mean(), list(params.values()))))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for laid_out, contiguous in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(laid_out, contiguous, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("algo, setting, device, side, laid_out", [
    ("protonet", "auto", "cpu", 28, True), ("matchingnet", "auto", "cpu", 28, True),
    ("baseline", "auto", "cpu", 28, True),
    ("maml", "auto", "cpu", 84, True), ("fomaml", "auto", "cpu", 84, True), ("mamlpp", "auto", "cpu", 84, True),
    ("anil", "auto", "cpu", 84, True),
    ("maml", "auto", "cpu", 28, False),  # faster on one core, slower with the threads mapping (below: one core)
    ("metasgd", "auto", "cpu", 84, False), ("reptile", "auto", "cpu", 84, False),  # slower
    ("imaml", "auto", "cpu", 84, False),
    ("protonet", "auto", "cuda", 84, False),  # not yet timed on a GPU
    ("protonet", False, "cpu", 28, False), ("maml", True, "cpu", 28, True),  # what is set is kept
])
def test_auto_lays_out_the_weights_channels_last_on_a_cpu_for_embedding_algorithms_and_the_maml_family_on_large_images(
        algo, setting, device, side, laid_out, monkeypatch):
    monkeypatch.setattr(hardware, "available_cores", lambda: 4)  # the threads mapping is open to the run
    cfg = compose_config([f"algo={algo}", "dataset=omniglot", f"hardware.channels_last={setting}".lower()])
    algorithm, settings = algorithm_of(cfg)
    assert channels_last(cfg.hardware.channels_last, settings, torch.device(device), (1, side, side)) is laid_out
    if device == "cpu":  # the network a run builds follows
        model, _ = build_network(cfg, algorithm, settings, (1, side, side), 5, torch.device(device))
        weight = [p for p in model.parameters() if p.dim() == 4][-1]  # the first, of one input channel, is both
        assert weight.is_contiguous(memory_format=torch.channels_last) is laid_out


@pytest.mark.parametrize("num_threads, cores", [(1, 4), ("auto", 1)])
def test_auto_lays_out_the_maml_family_channels_last_on_small_images_where_the_run_has_one_core(
        num_threads, cores, monkeypatch):
    monkeypatch.setattr(hardware, "available_cores", lambda: cores)
    cfg = compose_config(["algo=maml", "dataset=omniglot", f"hardware.num_threads={num_threads}"])
    algorithm, settings = algorithm_of(cfg)
    model, _ = build_network(cfg, algorithm, settings, (1, 28, 28), 5, torch.device("cpu"))
    assert [p for p in model.parameters() if p.dim() == 4][-1].is_contiguous(memory_format=torch.channels_last)
    for algo, laid_out in (("metasgd", True), ("reptile", False), ("imaml", False)):
        cfg = compose_config([f"algo={algo}", "dataset=omniglot", f"hardware.num_threads={num_threads}"])
        assert channels_last("auto", algorithm_of(cfg)[1], torch.device("cpu"), (1, 28, 28), num_threads) is laid_out
    assert not channels_last("auto", settings, torch.device("cpu"), (1,), num_threads)  # no images (sinusoid)
