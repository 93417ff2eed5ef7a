"""Structured-config schemas: the typed shape under every YAML in conf/.

Each group option's YAML starts from one of these schemas (``defaults: [/schema/<group>/<name>@_here_]``),
so a misspelt key or a value of the wrong type fails while Hydra composes, with the key named.
Range checks that a type cannot express live in ``check``.
"""

import difflib
import hashlib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class InnerLoopConfig:
    """The inner-loop knobs every gradient-based algorithm has."""

    name: str = MISSING  # the algorithm (set by algo=...)
    inner_lr: float = 0.01  # step size of the inner loop (alpha)
    inner_steps: int = 1  # inner steps on the support set in training
    test_inner_steps: int = 10  # inner steps at validation and meta-test


@dataclass
class DifferentiableInnerLoopConfig(InnerLoopConfig):
    """An inner loop the meta-gradient flows through (MAML and the algorithms built on its code)."""

    first_order: bool = False  # true: first-order MAML (inner gradients treated as constants)
    # recompute each inner step in the backward pass instead of keeping its activations: memory for compute
    checkpoint_inner: bool = False


@dataclass
class MAMLConfig(DifferentiableInnerLoopConfig):
    """MAML and first-order MAML (Finn et al., 2017)."""

    name: str = "maml"
    # MAML++ (Antoniou et al., 2019), each off by default; see metarun/algos/maml.py
    multi_step_loss: bool = False
    msl_iterations: int = 5000  # MSL weights reach the last step after this many iterations
    learned_lrs: bool = False  # a meta-learned inner learning rate per layer and step (LSLR)
    per_step_bn: bool = False  # a meta-learned batch-norm weight and bias per inner step (needs model.norm=batch)
    first_order_iterations: int = 0  # derivative-order annealing: first order up to this iteration


@dataclass
class ANILConfig(DifferentiableInnerLoopConfig):
    """ANIL (Raghu et al., 2019): MAML's inner loop on the head only."""

    name: str = "anil"
    head: Optional[str] = None  # parameter-name prefix of the head; null = the last layer's


@dataclass
class MetaSGDConfig(DifferentiableInnerLoopConfig):
    """Meta-SGD (Li et al., 2017): per-parameter learned inner learning rates, initialised at inner_lr."""

    name: str = "metasgd"
    test_inner_steps: int = 1


@dataclass
class ReptileConfig(InnerLoopConfig):
    """Reptile (Nichol et al., 2018): inner Adam/SGD on support mini-batches, outer interpolation."""

    name: str = "reptile"
    inner_lr: float = 0.001
    inner_steps: int = 5
    test_inner_steps: int = 50
    inner_batch: Optional[int] = 10  # support examples per inner step; null = the whole support set
    inner_optimizer: str = "adam"  # adam | sgd
    inner_betas: List[float] = field(default_factory=lambda: [0.0, 0.999])  # the inner Adam's betas


@dataclass
class ProtoNetConfig:
    """Prototypical Networks (Snell et al., 2017): no inner loop, no head."""

    name: str = "protonet"


@dataclass
class SinusoidConfig:
    """Sinusoid regression tasks (Finn et al., 2017, section 5.1)."""

    name: str = "sinusoid"
    shots: int = 10  # support points per task (K)
    queries: int = 10  # query points per task
    amplitude: List[float] = field(default_factory=lambda: [0.1, 5.0])  # drawn uniformly from this range
    phase: List[float] = field(default_factory=lambda: [0.0, math.pi])  # drawn uniformly from this range
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])  # inputs drawn uniformly from this range


@dataclass
class EpisodeConfig:
    """What the image datasets share: N-way K-shot episode sizes (5-way 1-shot with 15 queries per class by
    default) and the folder of their decoded caches."""

    ways: int = 5  # classes per task (N)
    shots: int = 1  # support images per class (K)
    queries: int = 15  # query images per class
    cache_dir: str = "${paths.cache_dir}"  # where the decoded images are cached, once per data version


@dataclass
class OmniglotConfig(EpisodeConfig):
    """Omniglot (Lake et al., 2015) with the vinyals, lake or folders split (see metarun/data/omniglot.py)."""

    name: str = "omniglot"
    root: str = "${paths.data_dir}/omniglot"  # the folder of the sets (zips, folders or torchmeta's data.hdf5)
    download: bool = True  # fetch the official sets when missing (with an md5 check)
    split: str = "vinyals"  # vinyals | lake | folders
    background: str = "images_background"  # vinyals, lake: the sets under root
    evaluation: str = "images_evaluation"  # vinyals, lake: the meta-test set
    val_alphabets: int = 5  # lake, and folders without val: train alphabets held out for validation
    train: List[str] = field(default_factory=list)  # folders: sets under root (or absolute paths)
    val: List[str] = field(default_factory=list)  # folders: empty = val_alphabets held out from train
    test: List[str] = field(default_factory=list)  # folders: the meta-test sets
    exclude_train_alphabets: bool = True  # folders: val/test drop alphabets that train has
    rotations: Optional[bool] = None  # null: on for vinyals, off otherwise
    image_size: int = 28  # pixels per side after resizing


@dataclass
class ImageFolderConfig(EpisodeConfig):
    """Your own class-folder trees (folders or zips) for meta-train, validation and meta-test."""

    name: str = "imagefolder"
    train: Any = MISSING  # a folder/zip or a list of them
    val: Any = MISSING  # validation classes: a folder/zip or a list of them
    test: Any = MISSING  # meta-test classes: a folder/zip or a list of them
    image_size: int = 84  # pixels per side after resizing
    channels: int = 3  # 1 (grey) or 3 (RGB)
    mean: List[float] = field(default_factory=lambda: [0.0])  # per-channel normalisation after scaling to [0, 1]
    std: List[float] = field(default_factory=lambda: [1.0])


@dataclass
class MiniImageNetConfig(EpisodeConfig):
    """miniImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split; see metarun.data.miniimagenet."""

    name: str = "miniimagenet"
    root: str = "${paths.data_dir}/miniimagenet"  # pickles, torchmeta's hdf5 or images/ + csv files
    image_size: int = 84  # pixels per side
    augment: bool = False  # random crop with padding and horizontal flip of training images, on the device


@dataclass
class MLPConfig:
    """Fully connected ReLU network."""

    _target_: str = "metarun.models.mlp.MLP"
    hidden: List[int] = field(default_factory=lambda: [40, 40])  # widths of the hidden layers


@dataclass
class ResNet12Config:
    """ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): four residual blocks of 64-160-320-640 channels."""

    _target_: str = "metarun.models.resnet12.ResNet12"
    widths: List[int] = field(default_factory=lambda: [64, 160, 320, 640])  # channels of the four blocks
    norm: str = "batch"  # batch | running: see metarun/models/batchnorm.py


@dataclass
class Conv4Config:
    """Conv-4 backbone (Vinyals et al., 2016; Finn et al., 2017)."""

    _target_: str = "metarun.models.conv4.Conv4"
    width: int = 64  # channels of every convolution
    max_pool: bool = True  # false: stride-2 convolutions, MAML's Omniglot network
    norm: str = "batch"  # batch | running: see metarun/models/batchnorm.py


@dataclass
class HardwareConfig:
    """Where and how the meta-batch runs."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    task_parallel: str = "auto"  # auto | vmap | loop | threads (the loop's tasks on every CPU core)
    # torch's intra-op threads: auto sizes them from the model and the cores this job has (metarun/hardware.py)
    num_threads: Any = "auto"  # auto | a positive integer
    deterministic: bool = False  # torch's deterministic algorithms (slower)
    distributed: bool = False  # true under torchrun: tasks and evaluation episodes split across ranks
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only, with loss scaling): autocast of the meta-loss
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions
    channels_last: bool = False  # convolution weights in channels-last memory format
    compile: bool = False  # torch.compile the per-task function
    # auto's choice per machine and setting, reused so a rerun picks the same mode (bit for bit the same run);
    # null: time the modes at every start (metarun/mode_memory.py)
    tuning_file: Optional[str] = "${paths.cache_dir}/task_parallel.json"


@dataclass
class WandbConfig:
    """Weights & Biases tracking; group and name of null are derived from the sweep and the overrides."""

    mode: str = "disabled"  # online | offline | disabled
    project: str = "metarun"
    entity: Optional[str] = None  # your wandb team or user; null: your default
    group: Optional[str] = None  # null: the sweep directory
    name: Optional[str] = None  # null: the overrides
    tags: List[str] = field(default_factory=list)
    log_artifact: bool = False  # upload checkpoints/best.pt as an artifact


@dataclass
class TensorBoardConfig:
    """TensorBoard event files in the run directory."""

    enabled: bool = False  # scalars, final results and the config as text in <run dir>/tensorboard


@dataclass
class MlflowConfig:
    """MLflow tracking: one MLflow run per metarun run, in a store the runs share."""

    enabled: bool = False  # params (the flat config), metrics at their steps, final results, best checkpoint
    # a SQLite store beside the runs (relative to where metarun starts, like hydra.run.dir) or a server's URL
    tracking_uri: str = "${oc.env:MLFLOW_TRACKING_URI,'sqlite:///outputs/mlflow.db'}"
    experiment: str = "metarun"  # a sweep's runs share the tag group=<sweep directory name>
    log_artifact: bool = True  # log checkpoints/best.pt as an artifact


@dataclass
class LoggerConfig:
    """Local logging (metrics.jsonl in the run directory, console progress) and the optional trackers.

    Each conf/logger option sets only its own keys (no schema default that would reset the rest), so
    ``logger=[local,tensorboard,mlflow]`` turns on each in any order.
    """

    jsonl: bool = True  # metrics.jsonl in the run directory
    console: bool = True  # progress bars or lines, and the results table at the end
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class PathsConfig:
    """Every path metarun reads or writes."""

    data_dir: str = "${oc.env:METARUN_DATA,data}"  # where the datasets are (only read)
    output_dir: str = "${hydra:runtime.output_dir}"  # the run directory (hydra.run.dir)
    cache_dir: str = "${oc.env:METARUN_CACHE,outputs/cache}"  # decoded datasets and auto's timings


@dataclass
class TrainConfig:
    """The outer loop."""

    iterations: int = 2000  # outer (meta) updates
    meta_batch_size: int = 25  # tasks per outer update
    log_every: int = 100  # iterations between metrics lines
    val_every: int = 1000  # iterations between validations (best.pt keeps the best)
    checkpoint_every: int = 1000  # iterations between writes of checkpoints/last.pt
    grad_clip: Optional[float] = None  # clip the meta-gradient's norm to this; null = no clipping
    # wall-clock budget: stop (validate, checkpoint, meta-test) at the first iteration past it; null = none
    max_minutes: Optional[float] = None


@dataclass
class OptimConfig:
    """The meta-optimiser and its learning-rate schedule over ``train.iterations``."""

    name: str = "adam"  # adam | sgd (plain SGD: Reptile's interpolation)
    lr: float = 0.001  # outer (meta) learning rate
    schedule: str = "constant"  # constant | linear | cosine (MAML++), from lr to final_lr; step: x gamma per step_every
    final_lr: float = 0.0  # where linear and cosine end
    step_every: int = 2000  # step: iterations between decays
    gamma: float = 0.5  # step: the factor of each decay


@dataclass
class EvalConfig:
    """Fixed evaluation episodes; shots/queries/ways of null mean 'as in training'."""

    episodes: int = 600  # meta-test episodes (mean ± 95% CI)
    val_episodes: int = 100  # episodes of each validation
    batch_size: int = 100  # episodes evaluated at once
    seed: int = 0  # the fixed episodes; the same for every algorithm and seed
    ways: Optional[int] = None  # null: dataset.ways
    shots: Optional[int] = None  # null: dataset.shots
    queries: Optional[int] = None  # null: dataset.queries
    # true: each query set is normalised as one batch (the MAML papers' setting); false: each query with the
    # support set's batch statistics plus its own (Nichol et al., 2018's non-transductive evaluation)
    transductive: bool = True


@dataclass
class Config:
    """The whole run."""

    algo: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0  # seeds every random stream of training
    mode: str = "train"  # train | eval (re-evaluate ``checkpoint`` with this command's overrides)
    checkpoint: Optional[str] = None  # mode=eval: the checkpoint to re-evaluate
    # true: continue from checkpoints/last.pt in paths.output_dir; auto: continue when it exists; false: start over
    resume: Any = "auto"


SCHEMAS = {
    "algo": {"maml": MAMLConfig, "anil": ANILConfig, "metasgd": MetaSGDConfig, "reptile": ReptileConfig,
             "protonet": ProtoNetConfig},
    "dataset": {"sinusoid": SinusoidConfig, "miniimagenet": MiniImageNetConfig, "omniglot": OmniglotConfig,
                "imagefolder": ImageFolderConfig},
    "model": {"mlp": MLPConfig, "conv4": Conv4Config, "resnet12": ResNet12Config},
    "hardware": {"base": HardwareConfig},
    "logger": {"base": LoggerConfig},
    "paths": {"base": PathsConfig},
}


def dirname(text: str, prefix: str = "", limit: int = 120) -> str:
    """``text`` (a run's overrides) as one safe directory name of at most ``limit`` characters after ``prefix``;
    empty without overrides, so a plain run's directory is its date alone.

    Paths in overrides would otherwise nest folders, and an Optuna trial's full-precision floats can pass the
    file system's 255-character limit; a hash of the whole text keeps shortened names distinct.
    """
    name = text.replace("/", "_")
    if not name:
        return ""
    if len(name) <= limit:
        return prefix + name
    return f"{prefix}{name[: limit - 9]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def register() -> None:
    """Store every schema in Hydra's ConfigStore, the ``dirname`` and ``metarun_help`` resolvers and, with the
    sweep extra, metarun's local launcher (idempotent)."""
    from metarun.help import help_section  # here: help.py walks the configs with this module's walk

    OmegaConf.register_new_resolver("dirname", dirname, replace=True)
    OmegaConf.register_new_resolver("metarun_help", help_section, replace=True)
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)
    try:
        from metarun import launcher
    except ModuleNotFoundError as err:
        if not err.name.startswith("hydra_plugins"):
            raise
        return  # no sweep extra: no hydra/launcher=local to extend
    launcher.install()


# Keys that must be strictly positive when present, with the fix to suggest.
POSITIVE = (
    "algo.inner_lr",
    "algo.inner_steps",
    "algo.test_inner_steps",
    "algo.msl_iterations",
    "algo.inner_batch",
    "dataset.ways",
    "dataset.shots",
    "dataset.queries",
    "dataset.image_size",
    "dataset.val_alphabets",
    "model.width",
    "train.iterations",
    "train.meta_batch_size",
    "train.log_every",
    "train.val_every",
    "train.checkpoint_every",
    "optim.lr",
    "optim.step_every",
    "optim.gamma",
    "eval.episodes",
    "eval.val_episodes",
    "eval.batch_size",
    "eval.ways",
    "eval.shots",
    "eval.queries",
)
CHOICES = {
    "hardware.task_parallel": ("auto", "vmap", "loop", "threads"),
    "hardware.precision": ("fp32", "bf16", "fp16"),
    "optim.name": ("adam", "sgd"),
    "optim.schedule": ("constant", "linear", "cosine", "step"),
    "mode": ("train", "eval"),
    "model.norm": ("batch", "running"),  # Conv-4 and ResNet-12 only
    "logger.wandb.mode": ("online", "offline", "disabled"),
}


def check(cfg: DictConfig) -> None:
    """Reject values that type checks cannot catch, naming the key and the fix.

    Raises:
        ValueError: on the first offending key.
    """
    missing = []
    for key, node, schema in walk(cfg):
        known = [f.name for f in fields(schema)] if is_dataclass(schema) else None
        if known is not None and key.rpartition(".")[2] not in known:
            raise ValueError(unknown_key(key, known))
        if node._is_missing():
            missing.append(key)
    if missing:
        raise ValueError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no value; set "
                         f"{' '.join(f'{key}=...' for key in missing)} on the command line (metarun --cfg job prints every key)")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}; set e.g. {key}={_example(value)}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=allowed[0])  # keys a model does not have are not checked
        if value not in allowed:
            raise ValueError(f"{key}={value} is not one of {', '.join(allowed)}")
    threads = cfg.hardware.num_threads
    if threads != "auto" and (type(threads) is not int or threads < 1):  # type(), as true and false are ints too
        raise ValueError(f"hardware.num_threads={threads} is not auto or a positive integer; set "
                         "hardware.num_threads=auto (sized from the model and the free cores) or e.g. 1")
    if cfg.train.max_minutes is not None and not cfg.train.max_minutes > 0:
        raise ValueError(f"train.max_minutes must be > 0 or null, got {cfg.train.max_minutes}; e.g. train.max_minutes=20")
    if cfg.train.grad_clip is not None and not cfg.train.grad_clip > 0:
        raise ValueError(f"train.grad_clip must be > 0 or null, got {cfg.train.grad_clip}")
    if OmegaConf.select(cfg, "algo.inner_optimizer") not in (None, "adam", "sgd"):
        raise ValueError(f"algo.inner_optimizer={cfg.algo.inner_optimizer} is not one of adam, sgd")
    if cfg.resume not in (True, False, "auto"):
        raise ValueError(f"resume={cfg.resume} is not one of true, false, auto; e.g. resume=auto")
    if OmegaConf.select(cfg, "algo.checkpoint_inner") and cfg.hardware.task_parallel in ("vmap", "threads"):
        raise ValueError(f"algo.checkpoint_inner=true runs tasks in a loop (torch's checkpoint runs neither under "
                         f"vmap nor in threads); set hardware.task_parallel=loop or auto, not "
                         f"{cfg.hardware.task_parallel}")
    if cfg.hardware.task_parallel == "threads" and str(cfg.hardware.device).startswith("cuda"):
        raise ValueError("hardware.task_parallel=threads spreads tasks over CPU cores; on a GPU use vmap, loop or auto")
    if cfg.mode == "eval" and not cfg.checkpoint:
        raise ValueError("mode=eval needs checkpoint=PATH (a run's checkpoints/best.pt or last.pt)")


def walk(node: DictConfig, prefix: str = ""):
    """Every key below ``node`` as (full key, its node, the schema dataclass of its parent or None), unresolved.

    ``check`` refuses keys a schema lacks, such as a misspelt ``+algo.inner_lrr=0.1`` that Hydra adds without a
    word (the typo would otherwise sit in the config, ignored), and names the values still missing (``???``);
    ``metarun --help`` gives each key its schema field's comment.
    """
    schema = OmegaConf.get_type(node)
    for key in node.keys():
        child = node._get_node(key)
        yield f"{prefix}{key}", child, schema
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from walk(child, f"{prefix}{key}.")


def unknown_key(key: str, known: list) -> str:
    """The line for ``key``, which its schema (with keys ``known``) does not have."""
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return (f"{key} is not a config key; {hint}{parent or 'the config'} has {', '.join(known)} "
            "(metarun --cfg job prints every key)")


def _example(value: Any) -> str:
    return "1" if isinstance(value, int) else "0.01"
