"""hardware.cuda_graphs on the GPU: a captured run trains as the eager run on the same seed (vmap and the loop, chunks
and clipping, MAML++'s annealing and learned inner rates, Meta-SGD, bf16, ProtoNet, validation between replays), and
a replayed iteration or evaluation chunk never waits for the GPU."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from metarun.mapping.task_parallel import map_tasks
from metarun.runner import captured, distributed, train
from metarun.runner.checkpoint import load_checkpoint
from metarun.runner.components import build_components
from tests.cuda.test_device import no_host_sync
from tests.synthetic import image_config
from tests.test_captured import EXACT_RATES, MAMLPP

pytestmark = pytest.mark.cuda


@pytest.fixture
def captures(monkeypatch):
    """Whether each graph captured so far is a training iteration's (the real capture, counted; an evaluation
    chunk's draws from no generator)."""
    made, real = [], captured.capture_graph

    def counted(work, generator, pool=None):
        made.append(generator is not None)
        return real(work, generator, pool)

    monkeypatch.setattr(captured, "capture_graph", counted)
    return made


def lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("overrides, graphs", [
    (["algo=maml", "hardware.task_parallel=vmap"], 1),
    (["algo=maml", "hardware.task_parallel=loop", "train.grad_clip=0.5"], 1),
    (["algo=maml", "hardware.task_parallel=vmap", "hardware.vmap_chunk=2"], 1),
    (["algo=metasgd", "hardware.task_parallel=vmap"], 1),
    (["algo=protonet", "hardware.task_parallel=vmap"], 1),
    (MAMLPP, 2),  # first order, then second: two graphs; MSL's weights and the learned rates inside them
    (["algo=maml", "hardware.task_parallel=vmap", "hardware.precision=bf16"], 1),
], ids=["maml-vmap", "maml-loop-clip", "maml-vmap-chunk", "metasgd", "protonet", "mamlpp", "maml-bf16"])
def test_a_captured_run_trains_as_the_eager_run_on_the_gpu(tmp_path, cuda, images_on_device, captures, overrides,
                                                           graphs):
    budget = ["train.iterations=12", "train.log_every=3", "train.val_every=6", "logger.jsonl=true",
              f"hardware.device={cuda}", *EXACT_RATES]
    train.run(image_config([*budget, *overrides, "hardware.cuda_graphs=true"], output_dir=tmp_path / "graphs"))
    assert sum(captures) == graphs and len(captures) == graphs + 1  # and the evaluation's chunks of 10 episodes
    train.run(image_config([*budget, *overrides], output_dir=tmp_path / "eager"))
    for mine, theirs in zip(lines(tmp_path / "graphs"), lines(tmp_path / "eager"), strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (mine["step"], key)
    last = load_checkpoint(tmp_path / "graphs" / "checkpoints" / "last.pt")
    reference = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")
    for name, value in last.params.items():
        torch.testing.assert_close(value, reference.params[name], rtol=1e-4, atol=1e-6)
    mine, theirs = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("graphs", "eager"))
    assert mine["test/acc_by_step"] == pytest.approx(theirs["test/acc_by_step"], rel=1e-5, abs=1e-6)


def test_a_replayed_iteration_never_waits_for_the_gpu(tmp_path, cuda, images_on_device, captures):
    cfg = image_config(["algo=mamlpp", "hardware.cuda_graphs=true", f"hardware.device={cuda}", "train.grad_clip=1.0",
                        "train.meta_batch_size=4"], output_dir=tmp_path)
    parts = build_components(cfg)
    state, group = train.TrainState.create(cfg, parts.params, parts.device), distributed.Group()
    clock = torch.zeros((), dtype=torch.long, device=parts.device)
    settings, train_task, _ = train.task_functions(parts, cfg, clock)
    means = train.TrainMeans(parts.device, state, OmegaConf.to_object(cfg.train))
    step = train.iteration_step(parts, state, settings, train_task, OmegaConf.to_object(cfg.train), group, True)

    def iteration(number):
        settings.at(number)
        _, loss, metric = step()
        state.scheduler.step()
        means.add(torch.stack([loss, metric]), number)

    for number in range(1, captured.WARMUP + 2):  # the warm-up iterations, then the capture and its first replay
        iteration(number)
    with no_host_sync(parts.device):
        iteration(captured.WARMUP + 2)
        iteration(captured.WARMUP + 3)
    assert captures == [True] and means.take(captured.WARMUP + 3, "acc")["train/loss"] > 0


def test_auto_runs_on_eagerly_after_a_capture_that_fails(tmp_path, cuda, images_on_device, monkeypatch, capsys):
    # a meta-step that reads its loss back (a host sync) cannot be captured: auto says why and trains on eagerly,
    # from the generators' states before the capture, so the run is the eager one
    real = train.meta_step

    def reads_back(*args):
        loss, metric = real(*args)
        float(loss)
        return loss, metric

    monkeypatch.setattr(train, "meta_step", reads_back)
    budget = ["algo=maml", "train.iterations=8", "train.log_every=2", "logger.jsonl=true", f"hardware.device={cuda}",
              *EXACT_RATES]
    train.run(image_config([*budget, "hardware.cuda_graphs=auto"], output_dir=tmp_path / "auto"))
    assert "the training iteration could not be captured (" in capsys.readouterr().out
    train.run(image_config(budget, output_dir=tmp_path / "eager"))
    for mine, theirs in zip(lines(tmp_path / "auto"), lines(tmp_path / "eager"), strict=True):
        assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6)


def test_a_replayed_evaluation_chunk_never_waits_for_the_gpu(cuda, images_on_device):
    parts = build_components(image_config(["algo=maml", "hardware.cuda_graphs=true", f"hardware.device={cuda}",
                                           "hardware.task_parallel=vmap"]))
    eval_task, generator = parts.eval_task(), torch.Generator(parts.device).manual_seed(0)
    batches = [parts.source.sample(8, generator) for _ in range(captured.WARMUP + 3)]
    with torch.no_grad():
        for batch in batches[:captured.WARMUP + 1]:  # warm-up, then the capture and its first replay
            parts.map_episodes(eval_task, parts.params, batch, "vmap")
        with no_host_sync(parts.device):
            replayed = [parts.map_episodes(eval_task, parts.params, batch, "vmap") for batch in batches[-2:]]
        for curves, batch in zip(replayed, batches[-2:]):
            torch.testing.assert_close(curves, map_tasks(eval_task, parts.params, batch, "vmap"))
