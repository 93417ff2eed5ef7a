"""``hardware.cuda_graphs``: a training iteration's device work (the draw of the meta-batch, the meta-gradient, the
clip and the fused optimiser step) captured once as a CUDA graph and replayed, so the host launches one graph per
iteration instead of thousands of kernels.

What a replay cannot see changing is computed on the device: the learning rate is a tensor the schedule fills
between replays, and an algorithm's annealed numbers (MAML++'s per-step loss weights) come from ``Annealed``'s
iteration counter inside the graph. What changes the graph's shape (MAML++'s switch from first to second order)
is part of the key: each key gets its own graph, captured after ``WARMUP`` eager iterations of its own.
"""

import warnings
from typing import Callable, Optional

import torch

from metarun.config.validate import GRAPHS_FIX, graphs_refusal
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


def capture_graph(work: Callable[[], tuple], generator: torch.Generator) -> tuple:
    """(graph, outputs): ``work`` captured as a CUDA graph, whose replays draw from ``generator`` as eager calls
    would and overwrite ``outputs``; the capture itself runs nothing."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
    graph.register_generator_state(generator)
    try:
        with torch.cuda.graph(graph):
            outputs = work()
    except RuntimeError:
        undo_capture(stream, generator)
        raise
    return graph, outputs


def undo_capture(stream: torch.cuda.Stream, generator: torch.Generator) -> None:
    """After a failed capture, what eager work needs: ``stream`` current again, and ``generator`` and the default
    generator out of capture mode (their capture ends only when it succeeds), at the seed and offset they had."""
    torch.cuda.set_stream(stream)
    index = generator.device.index if generator.device.index is not None else torch.cuda.current_device()
    for each in (generator, torch.cuda.default_generators[index]):
        each.graphsafe_set_state(each.clone_state())


class CapturedIteration:
    """Runs ``work`` (one iteration's device work, returning its output tensors) as a replayed CUDA graph per key."""

    def __init__(self, work: Callable[[], tuple], generator: torch.Generator, fallback: bool):
        """``generator``: the training stream ``work`` draws from; ``fallback``: on a capture that fails, say why
        once and run eagerly (auto) instead of stopping (true)."""
        self.work, self.generator, self.fallback = work, generator, fallback
        self.graphs = {}  # the current key -> (its graph, the output tensors each replay overwrites)
        self.warm = {}  # key -> eager iterations done before its capture
        self.eager = False  # a capture failed under auto: every iteration from then on runs eagerly

    def __call__(self, key) -> tuple:
        """One iteration of ``key``'s graph: warm up, capture, or replay."""
        if self.eager:
            return self.work()
        if key in self.graphs:
            graph, outputs = self.graphs[key]
            graph.replay()
            return outputs
        if self.warm.get(key, 0) < WARMUP:
            self.warm[key] = self.warm.get(key, 0) + 1
            return on_side_stream(self.work)
        self.graphs.clear()  # one graph's memory at a time: a shape that comes back is captured again
        try:
            graph, outputs = capture_graph(self.work, self.generator)
        except RuntimeError as err:
            return self.uncaptured(err)
        self.graphs[key] = (graph, outputs)
        graph.replay()
        return outputs

    def uncaptured(self, err: RuntimeError) -> tuple:
        """After a failed capture: stop (true), or say why once and run this and every later iteration eagerly."""
        cause = err.__context__ or err  # torch's own error first, not the capture's end that it broke
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if not self.fallback:
            raise RunError(f"hardware.cuda_graphs=true: the training iteration could not be captured ({reason}); "
                           f"{GRAPHS_FIX}") from err
        print(f"note: hardware.cuda_graphs=auto: the training iteration could not be captured ({reason}); it runs "
              "eagerly", flush=True)
        self.eager = True
        return self.work()
