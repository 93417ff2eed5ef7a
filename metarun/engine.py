"""What every run is built from (task source, network, meta-parameters) and how a per-task function is
mapped over a meta-batch (``MODES``): one vmapped computation, a per-task loop, or the loop's tasks spread
over the CPU's cores in threads; the fastest when ``hardware.task_parallel=auto`` (timed on the run's own
meta-step at start-up)."""

import contextlib
import copy
import threading
import time
from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf
from torch.func import functional_call, vmap

from metarun import hardware
from metarun.algos import get_algorithm
from metarun.data import build_tasks
from metarun.data.tasks import TaskBatch
from metarun.logging.console import phase
from metarun.models import build_model, without_head
from metarun.objectives import OBJECTIVES, Objective
from metarun.task_threads import map_in_threads

MODES = ("vmap", "loop", "threads")
WARMUP, REPEATS = 1, 2  # untimed and timed meta-steps per mode when auto times them


def functional_forward(model: torch.nn.Module):
    """``forward(params, x)`` that runs ``model`` with the given parameters and its own buffers.

    Safe to call from several threads at once (``threads`` mode): ``functional_call`` swaps the parameters
    into the module it is given, so other threads run a copy of ``model`` each, in the same train/eval mode.
    """
    buffers = dict(model.named_buffers())
    replicas = threading.local()

    def module() -> torch.nn.Module:
        if threading.current_thread() is threading.main_thread():
            return model
        if not hasattr(replicas, "model"):
            replicas.model = copy.deepcopy(model)
        return replicas.model.train(model.training)

    return lambda params, x: functional_call(module(), (params, buffers), (x,))


def support_context(forward, example_dims: int):
    """``forward`` for inductive evaluation (Nichol et al., 2018, section 5, "non-transductive"): given queries
    stacked with the support set as [Q, S + 1, *example] (``in_context``), each query is normalised with the
    statistics of the support set plus itself and only its own output [Q, out] is returned; support inputs
    [S, *example] pass through unchanged."""

    def forward_in_context(params, x):
        if x.dim() == example_dims + 2:
            return vmap(lambda rows: forward(params, rows)[-1])(x)
        return forward(params, x)

    return forward_in_context


def in_context(support_x: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
    """Each query appended to a copy of the support set: [Q, S + 1, *example]."""
    copies = support_x.expand(query_x.shape[0], *support_x.shape)
    return torch.cat([copies, query_x.unsqueeze(1)], 1)


def build_network(cfg, algorithm, input_shape: tuple, output_dim: int, device: torch.device):
    """The backbone as ``algorithm`` uses it (without its head when the algorithm has none) and the
    meta-learned tensors, on ``device``."""
    model = build_model(cfg.model, input_shape, output_dim)
    if not getattr(algorithm, "HEAD", True):
        model = without_head(model)
    model = model.to(device)
    if OmegaConf.select(cfg, "hardware.channels_last", default=False):
        # only 4-d tensors (convolution weights) change layout; the kernels then run channels-last
        model = model.to(memory_format=torch.channels_last)
    if hasattr(algorithm, "meta_params"):
        return model, algorithm.meta_params(model, cfg.algo)
    return model, dict(model.named_parameters())


@dataclass
class Setup:
    """The pieces of a run, built once from its config."""

    source: object
    objective: Objective
    algorithm: object
    model: torch.nn.Module
    forward: object
    params: dict
    device: torch.device
    mode: str  # one of MODES, or auto until ``tune`` has timed them
    hardware: object
    # torch's intra-op threads in the vmap and loop modes (the threads mode runs one per worker)
    threads: int = field(default_factory=torch.get_num_threads)

    def use_mode(self, mode: str) -> None:
        """Run tasks in ``mode`` from now on, with the intra-op thread count that mode needs."""
        self.mode = mode
        if self.device.type == "cpu":
            torch.set_num_threads(1 if mode == "threads" else self.threads)

    def modes(self) -> tuple:
        """The modes ``auto`` chooses between: threads only with several CPU cores to spread tasks over."""
        several_cores = self.device.type == "cpu" and hardware.available_cores() > 1
        return MODES if several_cores else tuple(mode for mode in MODES if mode != "threads")

    def autocast(self):
        """The autocast context of ``hardware.precision`` for the meta-loss and evaluation."""
        return hardware.autocast(self.hardware, self.device)

    def per_task(self, task_fn):
        """``task_fn`` as the engine runs it: compiled when ``hardware.compile`` is set."""
        return torch.compile(task_fn) if self.hardware.compile else task_fn

    def eval_task(self, cfg, transductive: bool = True):
        """``task_fn(params, *task)`` scoring one evaluation episode with algorithm settings ``cfg``.

        Transductive (the MAML papers' setting): the query set is one batch, normalised with its own batch
        statistics. Otherwise each query is scored with the support set's statistics plus its own
        (``support_context``), so no query influences another's prediction.
        """
        if transductive:
            return lambda p, *task: self.algorithm.evaluate_task(self.forward, p, *task, cfg, self.objective)
        forward = support_context(self.forward, len(self.source.input_shape))
        return lambda p, sx, sy, qx, qy: self.algorithm.evaluate_task(forward, p, sx, sy, in_context(sx, qx), qy,
                                                                       cfg, self.objective)


def setup(cfg) -> Setup:
    """Seed, pick the device, and build the task source, algorithm, network and meta-parameters of ``cfg``."""
    device = hardware.configure(cfg.hardware, cfg.seed)
    source = build_tasks(cfg.dataset, device)
    for split in ("val", "test"):  # at start-up, not at the first validation hours later
        source.check_episodes(split, ways=cfg.eval.ways, shots=cfg.eval.shots, queries=cfg.eval.queries)
    algorithm = get_algorithm(cfg.algo.name)
    if source.objective not in getattr(algorithm, "OBJECTIVES", (source.objective,)):
        raise ValueError(f"algo={cfg.algo.name} does not support {source.objective} (dataset={cfg.dataset.name}); "
                         f"pick a {' or '.join(algorithm.OBJECTIVES)} dataset")
    eval_ways = cfg.eval.ways or source.output_dim
    if getattr(algorithm, "HEAD", True) and source.objective == "classification" and eval_ways != source.output_dim:
        raise ValueError(f"eval.ways={eval_ways} differs from dataset.ways={source.output_dim}, but algo={cfg.algo.name} "
                         "has a classifier head of dataset.ways outputs; set eval.ways=null (only protonet can differ)")
    if OmegaConf.select(cfg, "algo.per_step_bn") and OmegaConf.select(cfg, "model.norm") == "running":
        raise ValueError("algo.per_step_bn=true normalises each inner step with its own batch statistics; "
                         "use model.norm=batch with it (running averages are for model.norm=running alone)")
    model, params = build_network(cfg, algorithm, source.input_shape, source.output_dim, device)
    mode = cfg.hardware.task_parallel
    if mode == "auto" and OmegaConf.select(cfg, "algo.checkpoint_inner", default=False):
        mode = "loop"  # torch's checkpoint runs neither under vmap nor with per-task gradients from threads
    parts = Setup(source, OBJECTIVES[source.objective], algorithm, model, functional_forward(model), params, device,
                  mode, cfg.hardware, hardware.intra_op_threads(cfg.hardware, model))
    parts.use_mode(mode)
    return parts


VMAP_MARGIN = 0.9  # auto picks vmap only when its meta-step takes less than this fraction of the others' best


def time_modes(step, modes=MODES[:2], synchronize=lambda: None, timer=time.perf_counter, warmup: int = WARMUP,
               repeats: int = REPEATS) -> dict:
    """Seconds per ``step(mode)`` for each of ``modes``: ``warmup`` untimed calls, then the mean of ``repeats``."""
    seconds = {}
    for mode in modes:
        for _ in range(warmup):
            step(mode)
        synchronize()
        start = timer()
        for _ in range(repeats):
            step(mode)
        synchronize()
        seconds[mode] = (timer() - start) / repeats
    return seconds


def fastest(seconds: dict) -> str:
    """The mode ``auto`` keeps: the fastest, but vmap only when clearly faster than the best of the others."""
    others = {mode: value for mode, value in seconds.items() if mode != "vmap"}
    best = min(others, key=others.get)
    return "vmap" if seconds["vmap"] < VMAP_MARGIN * others[best] else best


def tune(parts: Setup, task_fn, params: dict, sample, group=None, timer=time.perf_counter, memory=None) -> dict:
    """Resolve ``task_parallel=auto``: time the meta-step of ``task_fn`` (forward, and backward into ``params``
    unless gradients are disabled, as in evaluation) on the meta-batch ``sample()`` in each of ``parts.modes()``
    and switch ``parts`` to the fastest.

    Random streams and gradients are left as they were, so the run is the one the chosen mode gives. Timed
    in wall time by default: the threads mode's point is to use more than one core. With a ``memory``
    (``metarun.mode_memory.ModeMemory``) a single-process run reuses the timings of an earlier run of its
    setting, and so its choice, and remembers its own for the next.

    Returns:
        the seconds per meta-step of each mode, summed over the ranks of ``group`` (all ranks pick alike);
        empty when the mode was set.
    """
    if parts.mode != "auto":
        return {}
    if memory is None or (group is not None and group.world > 1):  # ranks must all time, to sum their timings
        seconds = _time_meta_step(parts, task_fn, params, sample, group, timer)
    else:
        with memory.held():
            seconds = memory.recall()
            if seconds is None:
                seconds = _time_meta_step(parts, task_fn, params, sample, group, timer)
                memory.keep(seconds, fastest(seconds))
    # vmap holds every task's graph (and, in evaluation, every episode of a chunk) at once, several times the
    # others' memory: it has to be clearly faster to be worth that
    parts.use_mode(fastest(seconds))
    return seconds


def _time_meta_step(parts: Setup, task_fn, params: dict, sample, group, timer) -> dict:
    cuda = parts.device.type == "cuda"
    with torch.random.fork_rng(devices=[parts.device] if cuda else []):
        batch = sample()

        def step(mode):
            parts.use_mode(mode)
            if torch.is_grad_enabled():
                meta_backward(task_fn, params, batch, mode, lambda loss: loss, parts.autocast)
            else:
                with parts.autocast():
                    map_tasks(task_fn, params, batch, mode)

        sync = (lambda: torch.cuda.synchronize(parts.device)) if cuda else (lambda: None)
        modes = parts.modes()
        # a meta-step of a large setting can take a minute on a CPU: say what the wait is for (train.run turns
        # progress off on every rank but the first)
        progress = phase(len(modes) * (WARMUP + REPEATS), f"timing hardware.task_parallel=auto ({', '.join(modes)})",
                         unit="step")

        def counted(mode):
            step(mode)
            progress.update(progress.position + 1)

        try:
            seconds = time_modes(counted, modes, sync, timer)
        finally:
            progress.close()
    for p in params.values():
        p.grad = None
    totals = torch.tensor(list(seconds.values()), device=parts.device)
    totals = group.sum(totals) if group is not None else totals
    return dict(zip(seconds, totals.tolist()))


def map_tasks(task_fn, params, batch: TaskBatch, mode: str):
    """Apply ``task_fn(params, sx, sy, qx, qy)`` to every task and stack each output over tasks.

    Args:
        mode: "vmap" batches all tasks into one computation; "loop" runs them one after another; "threads"
            runs them on the CPU's cores at once (``metarun.task_threads``).
    """
    if mode == "vmap":
        return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    tasks = batch.tensors()
    run = lambda i: task_fn(params, *(t[i] for t in tasks))  # noqa: E731
    outputs = map_in_threads(run, batch.num_tasks) if mode == "threads" else [run(i) for i in range(batch.num_tasks)]
    return tuple(torch.stack(parts) for parts in zip(*outputs)) if isinstance(outputs[0], tuple) else torch.stack(outputs)


def meta_backward(task_fn, params, batch: TaskBatch, mode: str, scale, autocast=contextlib.nullcontext):
    """Backpropagate ``scale(loss)`` of every task's ``(loss, metric) = task_fn(params, sx, sy, qx, qy)`` into
    ``params``' gradients (accumulated, as the sum over tasks); return the detached losses and metrics [T].

    The loop backpropagates each task as soon as it is computed, as the peers' per-task loops do, so only one
    task's graph is alive at a time; threads do the same on every core and add the tasks' gradients in task
    order (the loop's sum, bit for bit); vmap backpropagates the summed batch once. ``autocast`` wraps the
    forwards.
    """
    if mode == "vmap":
        with autocast():
            losses, metrics = map_tasks(task_fn, params, batch, mode)
        scale(losses.sum()).backward()
        return losses.detach(), metrics.detach()
    if mode == "threads":
        return _threads_backward(task_fn, params, batch, scale, autocast)
    outputs = []
    for task in zip(*batch.tensors()):
        with autocast():
            loss, metric = task_fn(params, *task)
        scale(loss).backward()  # not autograd.grad: checkpointed inner steps support backward only
        outputs.append((loss.detach(), metric.detach()))
    return tuple(torch.stack(parts) for parts in zip(*outputs))


def _threads_backward(task_fn, params, batch: TaskBatch, scale, autocast):
    """``meta_backward`` in threads mode: each worker returns one task's gradients, summed here in task order."""
    tasks, leaves = batch.tensors(), list(params.values())

    def task_gradients(i):
        with autocast():
            loss, metric = task_fn(params, *(t[i] for t in tasks))
        return loss.detach(), metric.detach(), torch.autograd.grad(scale(loss), leaves, allow_unused=True)

    outputs = map_in_threads(task_gradients, batch.num_tasks)
    with torch.no_grad():
        for _, _, gradients in outputs:
            for leaf, gradient in zip(leaves, gradients):
                if gradient is None:
                    continue
                if leaf.grad is None:
                    leaf.grad = gradient
                else:
                    leaf.grad += gradient
    return tuple(torch.stack(parts) for parts in zip(*((loss, metric) for loss, metric, _ in outputs)))
