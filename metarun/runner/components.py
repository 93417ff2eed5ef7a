"""What a run is built from, once, from its config: the task source, the algorithm with its settings, the
network and its meta-learned tensors, the device and how tasks run on it (``hardware.task_parallel``)."""

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from metarun.algos.base import Algorithm
from metarun.algos.objectives import OBJECTIVES, Objective
from metarun.config.validate import validated
from metarun.data import TaskSource, build_tasks
from metarun.mapping.chunks import starting_chunk
from metarun.mapping.ragged import episode_forward
from metarun.mapping.task_parallel import MAPPINGS, map_tasks, use_task_parallel
from metarun.models.batchnorm import in_context, support_context
from metarun.models.network import build_network, functional_forward
from metarun.runner import captured
from metarun.utils import hardware
from metarun.utils.registry import locate


def algorithm_of(cfg):
    """The algorithm ``algo._target_`` names and its validated settings (its schema's dataclass).

    Raises:
        ValueError: an unknown or mistyped ``algo.*`` key, or settings that clash with the rest of the run.
    """
    algorithm = locate(cfg.algo, "algo", Algorithm)
    settings = validated(cfg.algo, algorithm.schema, "algo")
    algorithm.check(cfg)
    return algorithm, settings


@dataclass
class Components:
    """The pieces of a run, built once from its config."""

    source: TaskSource
    objective: Objective
    algorithm: Algorithm
    settings: object  # the algorithm's settings, as its schema's dataclass
    model: torch.nn.Module
    forward: object
    params: dict
    device: torch.device
    task_parallel: str  # one of MAPPINGS, or auto until ``metarun.mapping.task_parallel.tune`` has timed them
    hardware: object
    # torch's intra-op threads in the vmap and loop mappings (the threads mapping runs one per worker)
    threads: int = field(default_factory=torch.get_num_threads)
    runs_in: tuple = MAPPINGS  # the task mappings the algorithm's settings run in
    variable: bool = False  # the source's episodes differ in ways and shots (``metarun.mapping.ragged``)
    # the tasks vmap backpropagates at a time in training (None: all), which hardware.vmap_chunk=auto lowers as the
    # memory requires (``metarun.mapping.chunks``)
    vmap_chunk: Optional[int] = None
    precision: str = "fp32"  # hardware.precision, auto resolved for the algorithm and device (``hardware.precision``)
    graphs: bool = False  # training iterations and evaluation chunks replayed as CUDA graphs (``captured.wanted``)
    # how evaluation maps its episodes' tasks: map_tasks, or, with graphs, its chunks replayed (``CapturedEpisodes``)
    map_episodes: Callable = map_tasks

    def auto_choices(self) -> tuple:
        """The mappings ``task_parallel=auto`` chooses between: those the algorithm runs in, threads only with several
        CPU cores and not where ``hardware.num_threads=1`` holds the run to one."""
        several = hardware.several_cores(self.device, getattr(self.hardware, "num_threads", "auto"))
        return tuple(mapping for mapping in self.runs_in if mapping != "threads" or several)

    def autocast(self):
        """The autocast context of ``hardware.precision`` (auto resolved) for the meta-loss and evaluation."""
        return hardware.autocast(self.precision, self.device)

    def per_task(self, task_fn):
        """``task_fn`` as the run maps it over tasks: compiled when ``hardware.compile`` is set."""
        return torch.compile(task_fn) if self.hardware.compile else task_fn

    def task_forward(self, support_x, support_y, query_x, query_y):
        """The network as one task's functions call it: ``forward``, or for variable episodes the same with padding
        left out of batch norm and a fixed head masked to the episode's classes (``metarun.mapping.ragged``)."""
        if not self.variable:
            return self.forward
        head = self.source.output_dim if self.algorithm.fixed_ways else None
        return episode_forward(self.forward, support_x, support_y, query_x, query_y, head)

    def eval_task(self, transductive: bool = True):
        """``task_fn(params, *task)`` scoring one evaluation episode with the run's algorithm settings: its metric
        after each test-time inner step.

        Transductive (the MAML papers' setting): the query set is one batch, normalised with its own batch
        statistics. Otherwise each query is scored with the support set's statistics plus its own
        (``support_context``), so no query influences another's prediction.
        """
        evaluate_task, objective, settings = self.algorithm.evaluate_task, self.objective, self.settings
        return self.episode_task(lambda forward, p, sx, sy, qx, qy: evaluate_task(forward, p, sx, sy, qx, qy, settings,
                                                                                   objective), transductive)

    def predict_task(self, transductive: bool = True):
        """``task_fn(params, *task)`` predicting one evaluation episode's queries: the algorithm's logits [Q, N] after
        its test-time inner steps, transductive or not as in ``eval_task``."""
        predict, objective, settings = self.algorithm.predict, self.objective, self.settings
        return self.episode_task(lambda forward, p, sx, sy, qx, qy: predict(forward, p, sx, sy, qx, settings, objective),
                                 transductive)

    def episode_task(self, task_fn, transductive: bool):
        """``task_fn(forward, params, *task)`` as ``task_fn(params, *task)``, with the network as evaluation calls it."""
        if transductive:
            return lambda p, *task: task_fn(self.task_forward(*task), p, *task)
        dims = len(self.source.input_shape)
        return lambda p, sx, sy, qx, qy: task_fn(support_context(self.task_forward(sx, sy, qx, qy), dims), p, sx, sy,
                                                 in_context(sx, qx), qy)


def task_mapping(cfg, runs_in: tuple) -> str:
    """``hardware.task_parallel``, or the one mapping the algorithm allows when that is auto.

    Raises:
        ValueError: a mapping the algorithm's settings do not run in.
    """
    mapping = cfg.hardware.task_parallel
    if mapping == "auto":
        return runs_in[0] if len(runs_in) == 1 else mapping
    if mapping not in runs_in:
        raise ValueError(f"algo={cfg.algo.name} with these settings runs tasks in {' or '.join(runs_in)} only "
                         f"(e.g. algo.checkpoint_inner=true: torch's checkpoint runs neither under vmap nor in "
                         f"threads); set hardware.task_parallel={runs_in[0]} or auto, not {mapping}")
    return mapping


def variable_mappings(cfg, algorithm: Algorithm, runs_in: tuple) -> tuple:
    """The mappings of ``runs_in`` that run variable episodes exactly: vmap, whose tasks stay padded, only for an
    algorithm that handles padding (``Algorithm.pads``) and with transductive evaluation.

    Raises:
        ValueError: ``hardware.task_parallel`` names a mapping that is left out.
    """
    mappings = padded_mappings(algorithm, cfg.eval.transductive, runs_in)
    if cfg.hardware.task_parallel not in (*mappings, "auto"):
        why = f"algo={cfg.algo.name} mixes a task's examples in ways padding would change" if not algorithm.pads else \
            "eval.transductive=false scores each query with the padded support set"
        raise ValueError(f"hardware.task_parallel=vmap pads variable episodes to the largest of the meta-batch, but {why}; "
                         f"set hardware.task_parallel={' or '.join(mappings)} or auto")
    return mappings


def padded_mappings(algorithm: Algorithm, transductive: bool, runs_in: tuple) -> tuple:
    """The mappings of ``runs_in`` that run variable (padded) episodes exactly (``variable_mappings``)."""
    return tuple(mapping for mapping in runs_in if mapping != "vmap" or algorithm.pads and transductive)


def check_support_copies(cfg, source) -> None:
    """Refuse ``eval.support_copies`` that cannot be made: negative, or without the dataset's augmentation."""
    copies = cfg.eval.get("support_copies", 0)  # a checkpoint's eval from before support copies has none
    if copies < 0:
        raise ValueError(f"eval.support_copies={copies} is negative; set 0 (no copies) or a count such as 4")
    if copies and source.augment is None:
        raise ValueError(f"eval.support_copies={copies} distorts support images with the dataset's training augmentation, "
                         f"and dataset={cfg.dataset.name} has none here; set dataset.augment=true (where the dataset has "
                         "it) or eval.support_copies=0")


def build_components(cfg) -> Components:
    """Seed, pick the device, and build the task source, algorithm, network and meta-parameters of ``cfg``."""
    algorithm, settings = algorithm_of(cfg)
    runs_in = algorithm.runs_in(settings)
    mapping = task_mapping(cfg, runs_in)
    device = hardware.configure(cfg.hardware, cfg.seed)
    source = build_tasks(cfg.dataset, device)
    check_support_copies(cfg, source)
    for split in ("val", "test"):  # at start-up, not at the first validation hours later
        for scored in source.scored_splits(split, cfg.eval.get("sources")):
            source.check_episodes(scored, ways=cfg.eval.ways, shots=cfg.eval.shots, queries=cfg.eval.queries)
    if source.objective not in algorithm.objectives:
        raise ValueError(f"algo={cfg.algo.name} does not support {source.objective} (dataset={cfg.dataset.name}); "
                         f"pick a {' or '.join(algorithm.objectives)} dataset")
    if algorithm.class_labels:
        if not source.label_by_class():
            raise ValueError(f"algo={cfg.algo.name} trains one classifier over every meta-train class, which "
                             f"dataset={cfg.dataset.name} cannot label; pick an image dataset")
    eval_ways = cfg.eval.ways or source.output_dim
    if algorithm.fixed_ways and source.objective == "classification" and eval_ways != source.output_dim:
        raise ValueError(f"eval.ways={eval_ways} differs from dataset.ways={source.output_dim}, but algo={cfg.algo.name} "
                         "has a classifier head of dataset.ways outputs; set eval.ways=null (only algorithms without "
                         "a head, such as protonet, can differ)")
    if source.variable:
        runs_in = variable_mappings(cfg, algorithm, runs_in)
        mapping = task_mapping(cfg, runs_in)
    model, params = build_network(cfg, algorithm, settings, source.input_shape, source.output_dim, device)
    graphs = captured.wanted(cfg.hardware, device, source)
    parts = Components(source, OBJECTIVES[source.objective], algorithm, settings, model, functional_forward(model),
                       params, device, mapping, cfg.hardware,
                       hardware.intra_op_threads(cfg.hardware, model), runs_in, source.variable,
                       starting_chunk(cfg.hardware.vmap_chunk),
                       hardware.precision(cfg.hardware, device, cfg.algo.name),
                       graphs, captured.CapturedEpisodes() if graphs else map_tasks)
    use_task_parallel(parts, parts.task_parallel)
    return parts
