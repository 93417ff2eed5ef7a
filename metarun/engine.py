"""What every run is built from (task source, network, meta-parameters) and how a per-task function is
mapped over a meta-batch: one vmapped computation or a per-task loop."""

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch.func import functional_call, vmap

from metarun import hardware
from metarun.algos import get_algorithm
from metarun.data import build_tasks
from metarun.data.tasks import TaskBatch
from metarun.models import build_model, without_head
from metarun.objectives import OBJECTIVES, Objective


def functional_forward(model: torch.nn.Module):
    """``forward(params, x)`` that runs ``model`` with the given parameters and its own buffers."""
    buffers = dict(model.named_buffers())
    return lambda params, x: functional_call(model, (params, buffers), (x,))


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
    mode: str

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
    return Setup(source, OBJECTIVES[source.objective], algorithm, model, functional_forward(model), params, device,
                 hardware.task_parallel_mode(cfg.hardware))


def map_tasks(task_fn, params, batch: TaskBatch, mode: str):
    """Apply ``task_fn(params, sx, sy, qx, qy)`` to every task and stack each output over tasks.

    Args:
        mode: "vmap" batches all tasks into one computation; "loop" runs them one after another.
    """
    if mode == "vmap":
        return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch.tensors())
    outputs = [task_fn(params, *(t[i] for t in batch.tensors())) for i in range(batch.num_tasks)]
    return tuple(torch.stack(parts) for parts in zip(*outputs)) if isinstance(outputs[0], tuple) else torch.stack(outputs)
