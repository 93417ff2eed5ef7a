"""The schema of the run config around the three components: hardware, logging, paths, the outer loop, the
meta-optimiser, evaluation, and ``Config``, the whole composed config (``conf/config.yaml``)."""

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from metarun.config.fields import choice, positive, schema, setting


@schema("hardware", "base")
@dataclass
class HardwareConfig:
    """Where and how the meta-batch runs."""

    device: str = setting("auto", help="auto | cpu | cuda | cuda:N")
    task_parallel: str = choice(
        "auto", "vmap", "loop", "threads",
        help="how tasks map over a meta-batch (threads: the loop's tasks on every CPU core); auto times them on a "
             "setting's first run and keeps the fastest (hardware.tuning_file)")
    num_threads: Any = setting("auto", help="torch's intra-op threads: auto sizes them from the model and the cores "
                                            "this job has (metarun/utils/hardware.py) auto | a positive integer")
    keep_freed_memory: Any = choice(
        "auto", True, False,
        help="CPU on glibc: serve every block from the heap and keep what a step frees there, for the rest of the "
             "process, so the next step reuses its pages instead of faulting fresh ones in (one core: 1.16-1.22x on "
             "long MAML runs, for 8-14% more peak memory); auto: where the run has one core; your own MALLOC_*_ or "
             "GLIBC_TUNABLES malloc settings win (metarun/utils/allocator.py)")
    deterministic: bool = setting(False, help="torch's deterministic algorithms (slower)")
    distributed: bool = setting(False, help="true under torchrun: tasks and evaluation episodes split across ranks")
    precision: str = choice(
        "fp32", "bf16", "fp16", "auto",
        help="autocast around the meta-loss and evaluation (fp16: CUDA only, with loss scaling); auto: bf16 where it "
             "was measured faster at the same accuracy (ProtoNet, Matching and Relation Networks, R2-D2, MetaOptNet on a "
             "CPU with AMX), "
             "else fp32 (metarun/utils/hardware.py)")
    tf32: bool = setting(True, help="CUDA: TF32 matmuls and convolutions")
    channels_last: Any = choice(
        "auto", True, False,
        help="convolution weights in channels-last memory format; auto: on a CPU for the algorithms that score a task "
             "on embeddings (ProtoNet, Matching and Relation Networks, R2-D2, MetaOptNet, Baseline: 1.3-1.5x faster "
             "there), for MAML, first-order MAML, MAML++ and ANIL on images of 84 px or more (1.27-1.5x), and for "
             "those and Meta-SGD on smaller images where the run has one core (Omniglot MAML 1.03-1.20x; with the "
             "threads mapping on two cores 5-way lost 0.9x), else off (Reptile and iMAML ran 0.97-0.98x with it; "
             "GPUs not yet timed)")
    compile: bool = setting(False, help="torch.compile the per-task function")
    cuda_graphs: Any = choice(
        False, True, "auto",
        help="capture a training iteration (draw, meta-gradient, clip, optimiser step) as a CUDA graph and replay it, "
             "and evaluation's chunks of episodes; "
             "true refuses in one line what it cannot capture (a CPU, ddp, fp16, compile, variable-size episodes, "
             "stroke re-drawing, images kept on the host, torch before 2.5), auto runs those eagerly "
             "(metarun/runner/captured.py)")
    jobs_per_gpu: int = positive(1, help="hydra/launcher=local on a GPU machine: the jobs that share each GPU at a "
                                         "time, so a batch of the sweep is #GPUs x this (without a GPU all start at "
                                         "once)")
    vmap_chunk: Any = setting(
        None, help="task_parallel=vmap in training: backpropagate this many tasks at a time, so that one chunk's "
                   "graph is alive instead of the whole meta-batch's (memory for speed); null: the whole meta-batch; "
                   "auto: the whole meta-batch, halved each time it runs out of memory (metarun/mapping/chunks.py)")
    tuning_file: Optional[str] = setting(
        "${paths.cache_dir}/task_parallel.json",
        help="auto's choice per machine and setting, reused so a rerun picks the same mapping (bit for bit the same "
             "run); null: time the mappings at every start (metarun/mapping/remembered.py)")


@dataclass
class WandbConfig:
    """Weights & Biases tracking; group and name of null are derived from the sweep and the overrides."""

    mode: str = choice(
        "online", "offline", "disabled", default="disabled",
        help="where runs go: the wandb server, local files, nowhere")
    project: str = "metarun"
    entity: Optional[str] = setting(None, help="your wandb team or user; null: your default")
    group: Optional[str] = setting(None, help="null: the sweep directory")
    name: Optional[str] = setting(None, help="null: the overrides")
    tags: List[str] = setting([])
    log_artifact: bool = setting(False, help="upload checkpoints/best.pt as an artifact")


@dataclass
class TensorBoardConfig:
    """TensorBoard event files in the run directory."""

    enabled: bool = setting(False, help="scalars, final results and the config as text in <run dir>/tensorboard")


@dataclass
class MlflowConfig:
    """MLflow tracking: one MLflow run per metarun run, in a store the runs share."""

    enabled: bool = setting(False, help="params (the flat config), metrics at their steps, final results, best "
                                        "checkpoint")
    tracking_uri: str = setting(
        "${oc.env:MLFLOW_TRACKING_URI,'sqlite:///outputs/mlflow.db'}",
        help="a SQLite store beside the runs (relative to where metarun starts, like hydra.run.dir) or a server's URL")
    experiment: str = setting("metarun", help="a sweep's runs share the tag group=<sweep directory name>")
    log_artifact: bool = setting(True, help="log checkpoints/best.pt as an artifact")


@schema("logger", "base")
@dataclass
class LoggerConfig:
    """Local logging (metrics.jsonl in the run directory, console progress) and the optional trackers.

    Each conf/logger option sets only its own keys (no schema default that would reset the rest), so
    ``logger=[local,tensorboard,mlflow]`` turns on each in any order.
    """

    jsonl: bool = setting(True, help="metrics.jsonl in the run directory")
    console: bool = setting(True, help="progress bars or lines, and the results table at the end")
    wandb: WandbConfig = setting(factory=WandbConfig)
    tensorboard: TensorBoardConfig = setting(factory=TensorBoardConfig)
    mlflow: MlflowConfig = setting(factory=MlflowConfig)


@schema("paths", "base")
@dataclass
class PathsConfig:
    """Every path metarun reads or writes."""

    data_dir: str = setting("${oc.env:METARUN_DATA,data}", help="where the datasets are (only read)")
    output_dir: str = setting("${hydra:runtime.output_dir}", help="the run directory (hydra.run.dir)")
    cache_dir: str = setting("${oc.env:METARUN_CACHE,outputs/cache}", help="decoded datasets and auto's timings")


@dataclass
class TrainConfig:
    """The outer loop."""

    iterations: int = positive(2000, help="outer (meta) updates; the default job (sinusoid MAML) learns in this many, "
                                          "about 20 s on one core")
    meta_batch_size: int = positive(25, help="tasks per outer update")
    log_every: int = positive(100, help="iterations between metrics lines")
    val_every: int = positive(1000, help="iterations between validations (best.pt keeps the best)")
    checkpoint_every: int = positive(1000, help="iterations between writes of checkpoints/last.pt")
    grad_clip: Optional[float] = positive(None, help="clip the meta-gradient's norm to this; null = no clipping")
    max_minutes: Optional[float] = positive(None, help="wall-clock budget: stop (validate, checkpoint, meta-test) at "
                                                       "the first iteration past it; null = none")
    diverge_factor: Optional[float] = positive(
        1000.0, help="diverging: stop as at a non-finite loss once an iteration's train loss passes this many times "
                     "the run's first one; null = never")
    max_loss: Optional[float] = positive(None, help="... or passes this value; null = no bound")
    init_from: Optional[str] = setting(None, help="a checkpoint whose tensors of the same name and shape start this "
                                                  "run (a pre-trained backbone; a new run only, not a resumed one); "
                                                  "null = the model's own initialisation")


@dataclass
class OptimConfig:
    """The meta-optimiser and its learning-rate schedule over ``train.iterations``."""

    name: str = choice("adam", "sgd", help="the meta-optimiser (plain SGD: Reptile's interpolation)")
    lr: float = positive(0.001, help="outer (meta) learning rate")
    schedule: str = choice(
        "constant", "linear", "cosine", "step",
        help="linear and cosine (MAML++) go from lr to final_lr over train.iterations; step: x gamma per step_every")
    final_lr: float = setting(0.0, help="where linear and cosine end")
    step_every: int = positive(2000, help="step: iterations between decays")
    gamma: float = positive(0.5, help="step: the factor of each decay")


@dataclass
class EvalConfig:
    """Fixed evaluation episodes; shots/queries/ways of null mean 'as in training'."""

    episodes: int = positive(600, help="meta-test episodes (mean ± 95% CI)")
    val_episodes: int = positive(100, help="episodes of each validation")
    batch_size: int = positive(100, help="episodes evaluated at once")
    seed: int = setting(0, help="the fixed episodes; the same for every algorithm and seed")
    ways: Optional[int] = positive(None, help="null: dataset.ways")
    shots: Optional[int] = positive(None, help="null: dataset.shots")
    queries: Optional[int] = positive(None, help="null: dataset.queries")
    transductive: bool = setting(True, help="true: each query set is normalised as one batch (the MAML papers' "
                                            "setting); false: each query with the support set's batch statistics plus "
                                            "its own (Nichol et al., 2018's non-transductive evaluation)")
    sources: Optional[List[str]] = setting(None, help="the sources a multi-source dataset (metadataset) is "
                                                      "meta-tested on, each scored apart; null: all it has")
    support_copies: int = setting(0, help="test-time augmentation: each support image joined by this many random "
                                          "distortions of itself (the dataset's training augmentation, "
                                          "dataset.augment), part of the fixed episode; 0: none")
    ensemble: List[str] = setting([], help="mode=eval: more checkpoints scored with ``checkpoint`` as one "
                                          "classifier, the mean of their class probabilities on the same "
                                          "episodes; []: the checkpoint alone")


@dataclass
class Config:
    """The whole run."""

    algo: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    hardware: HardwareConfig = setting(factory=HardwareConfig)
    logger: LoggerConfig = setting(factory=LoggerConfig)
    paths: PathsConfig = setting(factory=PathsConfig)
    train: TrainConfig = setting(factory=TrainConfig)
    optim: OptimConfig = setting(factory=OptimConfig)
    eval: EvalConfig = setting(factory=EvalConfig)
    seed: int = setting(0, help="seeds every random stream of training")
    mode: str = choice("train", "eval", help="eval re-evaluates ``checkpoint`` with this command's overrides")
    checkpoint: Optional[str] = setting(None, help="mode=eval: the checkpoint to re-evaluate")
    trust_checkpoint: bool = setting(False, help="true: load checkpoints that a safe load refuses (their pickle asks "
                                                 "for code); only for files you trust")
    resume: Any = choice(
        True, False, "auto", default="auto",
        help="true: continue from checkpoints/last.pt in paths.output_dir; auto: continue when it exists; false: "
             "start over")
