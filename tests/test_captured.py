"""hardware.cuda_graphs on the CPU: what cannot be captured is refused in one line, MAML++'s annealed numbers are
computed on the device as on the host, one graph is kept per shape of the settings, and a whole run through the
captured path (CUDA's graph and side stream stood in for by ``ReplayedOnCpu``) trains as the eager run does, with
checkpoints that read as an eager run's. The captures themselves run in tests/cuda/test_cuda_graphs.py."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from metarun.algos.maml import at_iteration
from metarun.config.validate import check
from metarun.data.files.store import ImageStore
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.runner import captured
from metarun.runner.checkpoint import load_checkpoint
from metarun.runner.components import algorithm_of, build_components
from metarun.runner.distributed import Group
from metarun.runner.evaluate import evaluate_checkpoint
from metarun.runner.train import Annealed, TrainState, iteration_step, run, task_functions
from metarun.utils.errors import RunError
from tests.conftest import compose_config
from tests.synthetic import image_config

MAMLPP = ["algo=mamlpp", "algo.inner_steps=2", "algo.msl_iterations=8", "algo.first_order_iterations=4",
          "train.iterations=12", "train.val_every=6", "train.checkpoint_every=6", "train.log_every=3",
          "logger.jsonl=true"]
# learning rates float32 holds exactly (2^-10 halved every 5 iterations), so a captured run matches the eager run bit
# for bit: a float rate the device's tensor rounds (1e-3) leaves differences at float32's precision
EXACT_RATES = ["optim.lr=0.0009765625", "optim.schedule=step", "optim.step_every=5", "optim.gamma=0.5"]


@pytest.mark.parametrize("overrides, named", [
    (["hardware.device=cpu"], "this run is on cpu"),
    (["hardware.device=cuda", "hardware.precision=fp16"], "hardware.precision=bf16"),
    (["hardware.device=cuda", "hardware.compile=true"], "hardware.compile=true"),
    (["hardware=ddp"], "hardware=ddp"),
])
def test_what_cannot_be_captured_is_refused_at_start(overrides, named):
    with pytest.raises(ValueError, match="hardware.cuda_graphs") as refused:
        check(compose_config([*overrides, "hardware.cuda_graphs=true"]))
    assert named in str(refused.value) and "hardware.cuda_graphs=false" in str(refused.value)
    # auto runs those eagerly
    check(compose_config([*overrides, "hardware.cuda_graphs=auto"]))


def test_auto_captures_only_where_it_can_and_true_names_why_not():
    hardware = compose_config(["hardware.cuda_graphs=auto"]).hardware
    drawable, redrawn = SimpleNamespace(uncapturable=None), SimpleNamespace(uncapturable="dataset.strokes.files ...")
    assert not captured.wanted(hardware, torch.device("cpu"), drawable)
    assert captured.wanted(hardware, torch.device("cuda"), drawable)
    assert not captured.wanted(hardware, torch.device("cuda"), redrawn)
    hardware.cuda_graphs = True
    with pytest.raises(ValueError, match=r"^dataset.strokes.files ...; set hardware.cuda_graphs=false"):
        captured.wanted(hardware, torch.device("cuda"), redrawn)
    hardware.cuda_graphs = False
    assert not captured.wanted(hardware, torch.device("cuda"), drawable)


def test_an_older_torch_is_named(monkeypatch):
    hardware = compose_config(["hardware.cuda_graphs=true"]).hardware
    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    with pytest.raises(ValueError, match=r"^hardware.cuda_graphs needs torch 2.5 or later; this is 2.4.1\+cu121; set"):
        captured.wanted(hardware, torch.device("cuda"), SimpleNamespace(uncapturable=None))
    hardware.cuda_graphs = "auto"
    assert not captured.wanted(hardware, torch.device("cuda"), SimpleNamespace(uncapturable=None))


def test_the_draws_that_cannot_be_captured_are_named(tmp_path):
    images = torch.zeros(2 * 20, 1, 4, 4, dtype=torch.uint8)
    store = ImageStore(images, torch.tensor([0, 20, 40]), ("a", "b"))
    cpu = torch.device("cpu")
    assert ImageTasks({"train": store}, 2, 1, 1, cpu, ([0.5], [0.5])).uncapturable is None
    redrawn = ImageTasks({"train": store}, 2, 1, 1, cpu, ([0.5], [0.5]), redraw=lambda x, rows, generator: x)
    assert redrawn.uncapturable.startswith("dataset.strokes.files")
    on_host = ImageTasks({"train": store}, 2, 1, 1, cpu, ([0.5], [0.5]), store_on="host")
    assert "dataset.store_on=device" in on_host.uncapturable
    sinusoid = build_components(compose_config([])).source  # the default job: sinusoid regression
    assert sinusoid.uncapturable is None


def test_annealed_loss_weights_computed_from_the_device_clock_are_the_hosts():
    settings = algorithm_of(compose_config(["algo=mamlpp", "algo.msl_iterations=100"]))[1]
    clock = torch.zeros((), dtype=torch.long)
    for iteration in [0, 1, 37, 99, 100, 101, 5000]:
        host = at_iteration(settings, iteration).step_weights
        device = at_iteration(settings, iteration, clock.fill_(iteration)).step_weights
        assert all(isinstance(w, torch.Tensor) and w.dtype == torch.float32 for w in device)
        assert [w.item() for w in device] == torch.tensor(host, dtype=torch.float32).tolist()


def test_one_inner_step_has_all_the_loss_weight():
    settings = algorithm_of(compose_config(["algo=mamlpp", "algo.inner_steps=1"]))[1]
    assert at_iteration(settings, 7).step_weights == [1.0]
    assert [w.item() for w in at_iteration(settings, 7, torch.tensor(7)).step_weights] == [1.0]


def test_one_shape_per_derivative_order_whatever_the_loss_weights():
    cfg = image_config(["algo=mamlpp", "algo.msl_iterations=100", "algo.first_order_iterations=3"])
    settings = Annealed(build_components(cfg))
    shapes = []
    for iteration in range(1, 8):
        settings.at(iteration)
        shapes.append(settings.shape())
    assert shapes[0] == shapes[1] == shapes[2] != shapes[3] == shapes[4] == shapes[6]
    assert dict(shapes[0])["first_order"] and not dict(shapes[3])["first_order"]
    assert "step_weights" not in dict(shapes[0])  # numbers the graph computes, not part of its shape


class HostReads(TorchDispatchMode):
    """Records the operations that make the host wait for a GPU (a value read back, a result whose size depends on
    the data): a CUDA graph cannot capture them."""

    # _linalg_check_errors: linalg's check of a factorisation reads its status back from a GPU
    WAITS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default, torch.ops.aten._unique2.default, torch.ops.aten.equal.default,
             torch.ops.aten._linalg_check_errors.default}

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WAITS:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mapping", ["loop", "vmap"])
@pytest.mark.parametrize("algo", sorted(path.stem for path in (Path(__file__).parents[1] / "conf" / "algo").glob("*.yaml")))
def test_no_algorithms_iteration_or_evaluation_reads_back_from_the_device(algo, mapping):
    # what tests/cuda checks with CUDA's sync debug mode, here for every algorithm: the draw, the meta-step with
    # the clock's settings, the clip and the optimiser step, after a first iteration (which creates the state)
    cfg = image_config([f"algo={algo}", f"hardware.task_parallel={mapping}", "train.meta_batch_size=2",
                        "train.grad_clip=1.0"])
    parts = build_components(cfg)
    if mapping not in parts.runs_in:
        pytest.skip(f"{algo} does not run in {mapping}")
    state = TrainState.create(cfg, parts.params, parts.device)
    settings, train_task, _ = task_functions(parts, cfg, torch.zeros((), dtype=torch.long))
    step = iteration_step(parts, state, settings, train_task, OmegaConf.to_object(cfg.train), Group(), graphs=False)
    settings.at(1)
    step()
    settings.at(2)
    with HostReads() as reads:
        settings.on_device()
        step()
    assert reads.found == []
    # and an evaluation chunk of it, as CapturedEpisodes replays it
    batch = parts.source.episodes("val", 0, 0, 2, ways=cfg.eval.ways, shots=cfg.eval.shots, queries=cfg.eval.queries)
    with HostReads() as reads, torch.no_grad():
        map_tasks(parts.eval_task(), parts.params, batch, mapping)
    assert reads.found == []


def flat(outputs: tuple) -> list:
    """A capture's output tensors, a meta-batch's four included."""
    return [t for output in outputs for t in (output.tensors() if isinstance(output, TaskBatch) else (output,))]


class ReplayedOnCpu:
    """A CUDA graph's stand-in on the CPU: a capture runs the work once (what capture and its first replay do
    together), each later replay runs it again into the captured output tensors, as a graph overwrites them."""

    captures = []

    def __init__(self, work, outputs, generator):
        self.work, self.outputs, self.generator, self.fresh = work, outputs, generator, True
        ReplayedOnCpu.captures.append(self)

    @staticmethod
    def capture(work, generator, pool=None):
        outputs = work()
        return ReplayedOnCpu(work, outputs, generator), outputs

    @staticmethod
    def iterations() -> list:
        """The training iterations' graphs (they draw from the run's generator; evaluation chunks draw nothing)."""
        return [graph for graph in ReplayedOnCpu.captures if graph.generator is not None]

    def replay(self):
        if self.fresh:
            self.fresh = False
            return
        for static, new in zip(flat(self.outputs), flat(self.work()), strict=True):
            if 0 in static.stride():  # an expanded constant (the labels 0..N-1 of every task)
                assert torch.equal(static, new)
            else:
                static.copy_(new)


@pytest.fixture
def captured_on_cpu(monkeypatch):
    """Runs take the captured path on the CPU (``ReplayedOnCpu`` for the graph, the warm-up on the one stream)."""
    ReplayedOnCpu.captures = []
    monkeypatch.setattr(captured, "wanted", lambda hardware, device, variable: True)
    monkeypatch.setattr(captured, "capture_graph", ReplayedOnCpu.capture)
    monkeypatch.setattr(captured, "on_side_stream", lambda work: work())


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_captured_run_trains_as_the_eager_run(tmp_path, captured_on_cpu, monkeypatch):
    # MAML++: derivative-order annealing (two graphs), MSL's loss weights from the clock, a step schedule filling
    # the tensor learning rate, validation between replays
    run(image_config([*MAMLPP, *EXACT_RATES, "hardware.cuda_graphs=auto"], output_dir=tmp_path / "captured"))
    # and one graph for the evaluation's chunks of 10 episodes, two validations' and the meta-test's
    assert len(ReplayedOnCpu.iterations()) == 2 and len(ReplayedOnCpu.captures) == 3
    monkeypatch.undo()
    run(image_config([*MAMLPP, *EXACT_RATES], output_dir=tmp_path / "eager"))
    assert metrics(tmp_path / "captured") == metrics(tmp_path / "eager")
    mine, theirs = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("captured", "eager"))
    assert [mine[key] for key in ("test/acc", "test/acc_by_step", "val/acc")] == \
        [theirs[key] for key in ("test/acc", "test/acc_by_step", "val/acc")]
    assert [line["train/lr"] for line in metrics(tmp_path / "eager") if "train/lr" in line] == \
        [2 ** -10, 2 ** -11, 2 ** -11, 2 ** -12]
    last = load_checkpoint(tmp_path / "captured" / "checkpoints" / "last.pt")
    reference = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")
    for name, value in last.params.items():
        assert torch.equal(value, reference.params[name]), name
    # the checkpoint reads as an eager run's: learning rates are numbers, steps not capturable
    group = last.optimizer["param_groups"][0]
    assert group["lr"] == 2 ** -12 and not group["capturable"] and type(last.scheduler["_last_lr"][0]) is float


def test_a_captured_run_resumes_from_its_checkpoint(tmp_path, captured_on_cpu):
    run_dir = tmp_path / "run"
    run(image_config([*MAMLPP, "train.iterations=6", "hardware.cuda_graphs=auto"], output_dir=run_dir))
    run(image_config([*MAMLPP, "hardware.cuda_graphs=auto", "resume=true"], output_dir=run_dir))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["iterations"] == 12 and results["test/acc"] > 0.3  # 5-way: chance is 0.2


@pytest.mark.parametrize("setting", ["auto", True])
def test_a_failed_capture_falls_back_under_auto_and_stops_under_true(tmp_path, captured_on_cpu, monkeypatch, capsys,
                                                                      setting):
    def unsupported(work, generator, pool=None):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(captured, "capture_graph", unsupported)
    cfg = image_config([*MAMLPP, f"hardware.cuda_graphs={setting}"], output_dir=tmp_path)
    if setting is True:
        with pytest.raises(RunError, match=r"could not be captured \(operation not permitted when stream is "
                                           r"capturing\); set hardware.cuda_graphs=false"):
            run(cfg)
        return
    run(cfg)
    assert "could not be captured (operation not permitted when stream is capturing); it runs eagerly" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["iterations"] == 12


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluation_chunks_replay_whichever_weights_and_episodes_they_are_given(captured_on_cpu, precision):
    # each call copies its weights and episodes into the graph's inputs: a replay scores them, not the captured ones
    cfg = image_config(["algo=maml", "hardware.task_parallel=vmap", "hardware.cuda_graphs=auto",
                        f"hardware.precision={precision}"])
    parts = build_components(cfg)
    assert isinstance(parts.map_episodes, captured.CapturedEpisodes)
    eval_task = parts.eval_task()
    generator = torch.Generator().manual_seed(0)
    for call in range(captured.WARMUP + 3):
        weights = {name: p + 0.1 * call * torch.randn(p.shape, generator=generator) for name, p in parts.params.items()}
        batch = parts.source.sample(4, generator)
        with torch.no_grad(), parts.autocast():
            curves = parts.map_episodes(eval_task, weights, batch, "vmap")
            assert torch.equal(curves, map_tasks(eval_task, weights, batch, "vmap")), call
    assert len(ReplayedOnCpu.captures) == 1
    # a replay's curves are the caller's: the next replay does not overwrite them
    again = parts.map_episodes(eval_task, parts.params, batch, "vmap")
    assert not torch.equal(again, curves)


def test_another_chunk_size_or_a_padded_batch_is_not_replayed_from_a_graph_of_another_shape(captured_on_cpu):
    cfg = image_config(["algo=protonet", "hardware.task_parallel=loop", "hardware.cuda_graphs=auto"])
    parts = build_components(cfg)
    eval_task, generator = parts.eval_task(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in [4, 4, 4, 3, 3, 3, 4, 3]:
            batch = parts.source.sample(size, generator)
            assert torch.equal(parts.map_episodes(eval_task, parts.params, batch, "loop"),
                               map_tasks(eval_task, parts.params, batch, "loop"))
        assert len(ReplayedOnCpu.captures) == 2  # one graph per chunk size
        padded = TaskBatch.cat([parts.source.sample(1, generator), TaskBatch(*(t[:, :-1] for t in batch.tensors()))])
        assert padded.padded
        assert torch.equal(parts.map_episodes(eval_task, parts.params, padded, "loop"),
                           map_tasks(eval_task, parts.params, padded, "loop"))
        assert len(ReplayedOnCpu.captures) == 2


def test_a_captured_checkpoint_evaluation_scores_as_the_eager_one(tmp_path, captured_on_cpu, monkeypatch):
    run(image_config(["algo=maml", "train.iterations=4"], output_dir=tmp_path / "run"))
    checkpoint = str(tmp_path / "run" / "checkpoints" / "best.pt")
    ReplayedOnCpu.captures = []
    scored = evaluate_checkpoint(compose_config(["mode=eval", f"checkpoint={checkpoint}", "hardware.cuda_graphs=auto"],
                                                tmp_path / "graphs"))
    assert len(ReplayedOnCpu.captures) == 1  # the meta-test's 5 chunks of 10 episodes
    monkeypatch.undo()
    eager = evaluate_checkpoint(compose_config(["mode=eval", f"checkpoint={checkpoint}"], tmp_path / "eager"))
    assert scored["test/acc_by_step"] == eager["test/acc_by_step"]


def capture_out_of_memory(work, generator, pool=None):
    try:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except torch.OutOfMemoryError:  # torch ends the broken capture with an error of its own
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


def test_a_capture_out_of_memory_under_auto_chunks_is_captured_again_with_half_the_tasks(tmp_path, captured_on_cpu,
                                                                                         monkeypatch, capsys):
    attempts = iter([capture_out_of_memory, capture_out_of_memory])  # then the capture fits: 2 tasks at once
    monkeypatch.setattr(captured, "capture_graph", lambda work, generator, pool: next(attempts, ReplayedOnCpu.capture)(
        work, generator))
    cfg = image_config(["algo=maml", "train.iterations=12", "train.meta_batch_size=8", "hardware.task_parallel=vmap",
                        "hardware.vmap_chunk=auto", "hardware.cuda_graphs=true"], output_dir=tmp_path)
    run(cfg)
    out = capsys.readouterr().out
    assert "out of memory with 8 tasks at once; backpropagating 4" in out and "with 4 tasks at once; " \
        "backpropagating 2" in out and "could not be captured" not in out
    assert len(ReplayedOnCpu.iterations()) == 1  # iteration 9: warm-ups 1-2 (8 tasks), 4-5 (4), 7-8 (2)
    assert json.loads((tmp_path / "results.json").read_text())["iterations"] == 12


@pytest.mark.parametrize("chunk", ["null", "4"])
def test_a_capture_out_of_memory_with_a_fixed_chunk_is_a_failed_capture(tmp_path, captured_on_cpu, monkeypatch, chunk):
    monkeypatch.setattr(captured, "capture_graph", capture_out_of_memory)
    cfg = image_config(["algo=maml", "train.meta_batch_size=8", "hardware.task_parallel=vmap",
                        f"hardware.vmap_chunk={chunk}", "hardware.cuda_graphs=true"], output_dir=tmp_path)
    with pytest.raises(RunError, match=r"could not be captured \(CUDA out of memory. Tried to allocate 2.00 GiB\)"):
        run(cfg)


def test_an_evaluation_that_cannot_be_captured_runs_eagerly_even_under_true(tmp_path, captured_on_cpu, monkeypatch,
                                                                            capsys):
    # the meta-test after hours of training must not stop on a capture: eager evaluation gives the same figures
    def iterations_only(work, generator, pool=None):
        if generator is None:
            raise RuntimeError("operation not permitted when stream is capturing")
        return ReplayedOnCpu.capture(work, generator)

    monkeypatch.setattr(captured, "capture_graph", iterations_only)
    run(image_config(["algo=maml", "train.iterations=12", "train.val_every=4", "hardware.cuda_graphs=true"],
                     output_dir=tmp_path))
    out = capsys.readouterr().out
    assert out.count("an evaluation chunk could not be captured (operation not permitted when stream is capturing); "
                     "it runs eagerly") == 1
    assert len(ReplayedOnCpu.iterations()) == 1 and json.loads((tmp_path / "results.json").read_text())["iterations"] == 12
