"""``hardware.cuda_graphs``: a training iteration's device work (the draw of the meta-batch, the meta-gradient, the
clip and the fused optimiser step) captured once as a CUDA graph and replayed, so the host launches one graph per
iteration instead of thousands of kernels.

What a replay cannot see changing is computed on the device: the learning rate is a tensor the schedule fills
between replays, and an algorithm's annealed numbers (MAML++'s per-step loss weights) come from ``Annealed``'s
iteration counter inside the graph. What changes the graph's shape (MAML++'s switch from first to second order)
is part of the key: each key gets its own graph, captured after ``WARMUP`` eager iterations of its own.

Evaluation replays its chunks of episodes the same way (``CapturedEpisodes``), keyed by their shapes: what changes
between replays (the episodes, the weights scored) is copied into the graph's own input tensors.
"""

import warnings
from typing import Callable, Optional

import torch

from metarun.config.validate import GRAPHS_FIX, graphs_refusal
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import map_tasks
from metarun.utils.errors import RunError

# eager iterations of a key before its capture, on a side stream as torch.cuda.graph asks: they create the
# cuBLAS/cuDNN handles, the optimiser's state and the gradients' accumulation buffers outside the graph
WARMUP = 2

# the oldest torch assumed: CUDA graphs that advance a generator of the run's own, schedules that fill a tensor
# learning rate in place, fused Adam steps that read it from the device
OLDEST_TORCH = (2, 5)


def torch_refusal() -> Optional[str]:
    """Why this torch cannot capture a training iteration, or None."""
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < OLDEST_TORCH:
        return (f"hardware.cuda_graphs needs torch {'.'.join(map(str, OLDEST_TORCH))} or later; this is "
                f"{torch.__version__}")
    return None


def wanted(hardware, device: torch.device, source) -> bool:
    """Whether this run captures its iterations: ``true`` does (or raises why it cannot), ``auto`` where it can
    (on CUDA, with a ``source`` whose draws can be captured).

    Raises:
        ValueError: ``hardware.cuda_graphs=true`` for a run that cannot be captured.
    """
    setting = hardware.cuda_graphs
    reason = (graphs_refusal(hardware, device.type) or source.uncapturable or torch_refusal()) if setting else None
    if setting is True and reason:
        raise ValueError(f"{reason}; {GRAPHS_FIX}")
    return bool(setting) and reason is None


def device_learning_rates(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make each group's learning rate a tensor on ``device`` (the schedule fills it between replays, where a
    float would be baked into the graph) and its step capturable."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)  # fused Adam reads float
        group["capturable"] = True


def eager_state(state: dict) -> dict:
    """An optimiser's or schedule's ``state_dict`` as an eager run's: tensor learning rates as floats, steps not
    capturable. So a checkpoint reads the same whether or not its run captured iterations, and resumes either way."""
    def number(value):
        return value.item() if isinstance(value, torch.Tensor) and value.dim() == 0 else value

    out = dict(state)
    if "param_groups" in out:
        out["param_groups"] = [{**group, "lr": number(group["lr"]), "capturable": False} for group in out["param_groups"]]
    if "_last_lr" in out:
        out["_last_lr"] = [number(lr) for lr in out["_last_lr"]]
    return out


def on_side_stream(work: Callable[[], tuple]) -> tuple:
    """``work`` run eagerly on a side stream, ordered after the current stream's work and before what follows it."""
    current, stream = torch.cuda.current_stream(), torch.cuda.Stream()
    stream.wait_stream(current)
    with torch.cuda.stream(stream), warnings.catch_warnings():
        # fused Adam warns that a capturable step runs uncaptured: here it is meant to
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        outputs = work()
    current.wait_stream(stream)
    return outputs


def capture_graph(work: Callable[[], tuple], generator: Optional[torch.Generator], pool=None) -> tuple:
    """(graph, outputs): ``work`` captured as a CUDA graph, whose replays draw from ``generator`` (where ``work``
    draws) as eager calls would and overwrite ``outputs``; the capture itself runs nothing. ``pool``: a memory pool
    shared with other graphs that never replay at the same time (None: the graph's own)."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
    if generator is not None:
        graph.register_generator_state(generator)
    try:
        with torch.cuda.graph(graph, pool=pool):
            outputs = work()
    except RuntimeError:
        undo_capture(stream, generator)
        raise
    return graph, outputs


def undo_capture(stream: torch.cuda.Stream, generator: Optional[torch.Generator]) -> None:
    """After a failed capture, what eager work needs: ``stream`` current again, and ``generator`` and the default
    generator out of capture mode (their capture ends only when it succeeds), at the seed and offset they had."""
    torch.cuda.set_stream(stream)
    index = generator.device.index if generator is not None else None
    default = torch.cuda.default_generators[torch.cuda.current_device() if index is None else index]
    for each in (default,) if generator is None else (generator, default):
        each.graphsafe_set_state(each.clone_state())


class Replays:
    """Runs some work as a replayed CUDA graph per key: ``WARMUP`` eager runs of a key, then its capture, then
    replays; the ``keep`` keys captured last keep their graphs."""

    def __init__(self, what: str, fallback: bool, generator: Optional[torch.Generator] = None, keep: int = 1,
                 smaller: Optional[Callable[[], bool]] = None, shared_pool: bool = False):
        """``what``: the work, as an error names it; ``fallback``: on a capture that fails, say why once and run
        eagerly instead of stopping; ``generator``: the stream the work draws from, if any; ``smaller``: after a
        capture that ran out of memory, whether it made the work smaller (a new key, captured after its own
        warm-up); ``shared_pool``: the graphs share one memory pool (they never replay at once and their outputs
        are copied before the next replay), else each holds its own."""
        self.what, self.fallback, self.generator, self.keep = what, fallback, generator, keep
        self.smaller = smaller
        self.pool = torch.cuda.graph_pool_handle() if shared_pool and torch.cuda.is_available() else None
        self.graphs = {}  # key -> (its graph, the output tensors each replay overwrites), the oldest first
        self.warm = {}  # key -> eager runs done before its capture
        self.eager = False  # a capture failed and the work could not be made smaller: eager from then on

    def __call__(self, key, work: Callable[[], tuple]) -> tuple:
        """``work``'s outputs, from ``key``'s graph: warm up, capture, or replay. ``work`` must be the same
        computation on the same tensors each time ``key`` comes (the graph replays what it captured)."""
        if self.eager:
            return work()
        if key in self.graphs:
            graph, outputs = self.graphs[key]
            graph.replay()
            return outputs
        if self.warm.get(key, 0) < WARMUP:
            self.warm[key] = self.warm.get(key, 0) + 1
            return on_side_stream(work)
        while len(self.graphs) >= self.keep:  # a key that comes back is captured again
            self.graphs.pop(next(iter(self.graphs)))
        captured = self.capture(work)
        if captured is None:
            return work()
        self.graphs[key] = captured
        captured[0].replay()
        return captured[1]

    def capture(self, work: Callable[[], tuple]) -> Optional[tuple]:
        """(graph, outputs) of ``work``; None after a capture that failed (its memory released), the work made
        ``smaller`` or, failing that, eager from now on with a note.

        Raises:
            RunError: the capture failed and ``fallback`` is off.
        """
        try:
            return capture_graph(work, self.generator, self.pool)
        except RuntimeError as err:
            cause = err.__context__ or err  # torch's own error first, not the capture's end that it broke
            out_of_memory = isinstance(cause, torch.OutOfMemoryError)
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        # out of the except block: the traceback, which held the failed capture's graph and tensors, is gone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if out_of_memory and self.smaller is not None and self.smaller():
            return None
        if not self.fallback:
            raise RunError(f"hardware.cuda_graphs=true: {self.what} could not be captured ({reason}); {GRAPHS_FIX}")
        print(f"note: hardware.cuda_graphs: {self.what} could not be captured ({reason}); it runs eagerly", flush=True)
        self.eager = True
        return None


class CapturedEpisodes:
    """``map_tasks`` over evaluation chunks as replayed CUDA graphs: each chunk's episodes and the weights are
    copied into the graphs' own input tensors, so one graph per chunk shape serves every validation and the
    meta-test, whichever weights they score. A capture that fails leaves evaluation eager, with a note, whatever
    ``hardware.cuda_graphs`` says: eager evaluation gives the same figures, and a meta-test after hours of
    training must not stop on it."""

    def __init__(self):
        # a validation's chunk and its last, smaller one; the meta-test's two
        self.replays = Replays("an evaluation chunk", fallback=True, keep=4, shared_pool=True)
        self.weights = {}  # the weights' names, shapes and dtypes -> the tensors every graph reads them from
        self.episodes = {}  # key -> the episodes its graph reads (only the keys with a graph, and the current one)

    def __call__(self, eval_task, params: dict, batch: TaskBatch, mapping: str) -> torch.Tensor:
        """``map_tasks(eval_task, params, batch, mapping)``, replayed where it can be."""
        if batch.padded:  # a padded batch's loop reads its sizes back from the device
            return map_tasks(eval_task, params, batch, mapping)
        signature = tuple((name, p.shape, p.dtype) for name, p in params.items())
        key = (eval_task, mapping, signature, *((t.shape, t.dtype) for t in batch.tensors()))
        weights = self.weights.setdefault(signature, {name: p.detach().clone() for name, p in params.items()})
        episodes = self.episodes.setdefault(key, TaskBatch(*(t.clone() for t in batch.tensors())))
        for static, new in zip([*weights.values(), *episodes.tensors()], [*params.values(), *batch.tensors()]):
            static.copy_(new)
        device = batch.support_x.device.type

        def work() -> tuple:
            # the evaluation's autocast (entered outside the capture), without its cache of cast weights, which
            # would outlive the capture that filled it (torch's notes on CUDA graphs with AMP)
            with torch.autocast(device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device),
                                cache_enabled=False):
                return (map_tasks(eval_task, weights, episodes, mapping),)

        curves, = self.replays(key, work)
        self.episodes = {k: v for k, v in self.episodes.items() if k == key or k in self.replays.graphs}
        return curves.clone()  # the next replay overwrites the graph's output
