"""Structured-config schemas: the typed shape under every YAML in conf/.

Each group option's YAML starts from one of these schemas (``defaults: [/schema/<group>/<name>@_here_]``),
so a misspelt key or a value of the wrong type fails while Hydra composes, with the key named. A field's
allowed values and range are typed on the field itself (``choice``, ``positive``), and ``check`` and ``validated``
apply them; a YAML option states only what differs from its schema.
"""

import difflib
import math
from dataclasses import Field, dataclass, field, fields, is_dataclass
from functools import lru_cache
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

_FIRST = object()


def choice(*allowed: Any, default: Any = _FIRST) -> Field:
    """A field whose value must be one of ``allowed``; its default is the first unless ``default`` says otherwise."""
    return field(default=allowed[0] if default is _FIRST else default, metadata={"choices": allowed})


def positive(default: Any = MISSING) -> Field:
    """A number field whose value must be > 0 (null, where the type allows it, is not checked)."""
    return field(default=default, metadata={"positive": True})


NORMS = ("batch", "running")  # model.norm: see metarun/models/batchnorm.py


@dataclass
class InnerLoopConfig:
    """The inner-loop knobs every gradient-based algorithm has."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = MISSING
    name: str = MISSING  # the algorithm (set by algo=...)
    inner_lr: float = positive(0.01)  # step size of the inner loop (alpha)
    inner_steps: int = positive(1)  # inner steps on the support set in training
    test_inner_steps: int = positive(10)  # inner steps at validation and meta-test


@dataclass
class DifferentiableInnerLoopConfig(InnerLoopConfig):
    """An inner loop the meta-gradient flows through (MAML and the algorithms built on its code)."""

    first_order: bool = False  # true: first-order MAML (inner gradients treated as constants)
    # recompute each inner step in the backward pass instead of keeping its activations: memory for compute (tasks
    # then run in a loop)
    checkpoint_inner: bool = False
    # each task's head before its inner loop: learned (the meta-learned head, MAML's), zero, or prototypes (weights
    # 2·prototype and bias -|prototype|² of the support embeddings: fo-Proto-MAML, Triantafillou et al., 2020)
    head_init: str = choice("learned", "zero", "prototypes")


@dataclass
class MAMLConfig(DifferentiableInnerLoopConfig):
    """MAML and first-order MAML (Finn et al., 2017)."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.maml.ALGORITHM"
    name: str = "maml"
    # MAML++ (Antoniou et al., 2019), each off by default (algo=mamlpp turns all on); see metarun/algos/maml.py
    multi_step_loss: bool = False
    msl_iterations: int = positive(5000)  # MSL weights reach the last step after this many iterations
    learned_lrs: bool = False  # a meta-learned inner learning rate per layer and step (LSLR)
    per_step_bn: bool = False  # a meta-learned batch-norm weight and bias per inner step (needs model.norm=batch)
    first_order_iterations: int = 0  # derivative-order annealing: first order up to this iteration


@dataclass
class ANILConfig(DifferentiableInnerLoopConfig):
    """ANIL (Raghu et al., 2019): MAML's inner loop on the head only."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.anil.ALGORITHM"
    name: str = "anil"
    head: Optional[str] = None  # parameter-name prefix of the head; null = the last layer's


@dataclass
class MetaSGDConfig(DifferentiableInnerLoopConfig):
    """Meta-SGD (Li et al., 2017): per-parameter learned inner learning rates, initialised at inner_lr."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.metasgd.ALGORITHM"
    name: str = "metasgd"
    test_inner_steps: int = positive(1)


@dataclass
class ReptileConfig(InnerLoopConfig):
    """Reptile (Nichol et al., 2018): inner Adam/SGD on support mini-batches, outer interpolation."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.reptile.ALGORITHM"
    name: str = "reptile"
    inner_lr: float = positive(0.001)
    inner_steps: int = positive(5)
    test_inner_steps: int = positive(50)
    inner_batch: Optional[int] = positive(10)  # support examples per inner step; null = the whole support set
    inner_optimizer: str = choice("adam", "sgd")  # the inner loop's optimiser
    inner_betas: List[float] = field(default_factory=lambda: [0.0, 0.999])  # the inner Adam's betas


@dataclass
class ProtoNetConfig:
    """Prototypical Networks (Snell et al., 2017): no inner loop, no head."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.protonet.ALGORITHM"
    name: str = "protonet"


@dataclass
class MatchingNetConfig:
    """Matching Networks (Vinyals et al., 2016): cosine attention over the support set, no head."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.matchingnet.ALGORITHM"
    name: str = "matchingnet"
    # full context embeddings (FCE, the paper's appendix A): support embeddings read by a bidirectional LSTM over the
    # support set, queries by an attention LSTM over those (meta/fce/*); false: the backbone's embeddings alone
    fce: bool = False
    fce_steps: int = positive(5)  # FCE: the attention LSTM's processing steps (K "reads" of the support set)


@dataclass
class RelationNetConfig:
    """Relation Networks (Sung et al., 2018): a learned relation module on concatenated embeddings, no head."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.relationnet.ALGORITHM"
    name: str = "relationnet"
    hidden: int = positive(8)  # hidden units of the relation module's MLP (the paper's FC layer of 8)
    # mse: the paper's squared error of the scores against one-hot targets; ce: cross-entropy on the relation
    # module's pre-sigmoid outputs as logits
    loss: str = choice("mse", "ce")


@dataclass
class R2D2Config:
    """R2-D2 (Bertinetto et al., 2019): a closed-form ridge-regression head on the embeddings, no head."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.r2d2.ALGORITHM"
    name: str = "r2d2"
    # the ridge penalty lambda on the support set's mean squared error (lambda is Python's keyword, hence the name):
    # its initial value when learned; 50 in the reference code
    ridge_lambda: float = positive(50.0)
    learn_lambda: bool = True  # meta-learn lambda (meta/log_lambda, so it stays > 0); false: fixed at ridge_lambda
    scale: float = positive(10.0)  # the logit scale alpha's initial value (meta/scale, meta-learned)


@dataclass
class MetaOptNetSVMConfig:
    """MetaOptNet-SVM (Lee et al., 2019): a differentiable multi-class SVM head on the embeddings, no head."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.metaoptnet_svm.ALGORITHM"
    name: str = "metaoptnet_svm"
    c: float = positive(0.1)  # the SVM's regularisation C (the bound on the dual variables), 0.1 in the paper
    # accelerated projected-gradient steps on the SVM's dual, unrolled for the meta-gradient (training and test)
    svm_iterations: int = positive(50)
    scale: float = positive(1.0)  # the logit scale's initial value (meta/scale, meta-learned; 1 in the reference code)


@dataclass
class BaselineConfig:
    """Baseline and Baseline++ (Chen et al., 2019): pre-training on all meta-train classes, a new head per task."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.baseline.ALGORITHM"
    name: str = "baseline"
    # the classifier in pre-training and at meta-test: linear (Baseline) or cosine (Baseline++, algo=baselinepp)
    classifier: str = choice("linear", "cosine")
    scale: float = positive(10.0)  # the cosine classifier's fixed scale of its similarities
    fit_steps: int = positive(100)  # meta-test: SGD steps fitting a new head on the support embeddings
    fit_lr: float = positive(0.01)  # meta-test: the head's SGD learning rate (momentum 0.9)
    fit_weight_decay: float = 0.001  # meta-test: the head's weight decay


@dataclass
class MetaLSTMConfig(InnerLoopConfig):
    """Meta-LSTM (Ravi & Larochelle, 2017): an LSTM meta-learner whose cell state is the learner's parameters."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.metalstm.ALGORITHM"
    name: str = "metalstm"
    # the input gate (learning rate) at initialisation, below 1: its bias starts at logit(inner_lr), so the first
    # updates are SGD at about this rate (the reference code draws the bias from U(-5, -4): 0.007 to 0.018)
    inner_lr: float = positive(0.01)
    inner_steps: int = positive(5)  # learner updates on the whole support set in training (the LSTM's time steps)
    test_inner_steps: int = positive(5)  # learner updates at validation and meta-test (the paper: as in training)
    hidden_size: int = positive(20)  # the first LSTM layer's hidden units, shared by every parameter coordinate
    # the forget gate's bias at initialisation: f = sigmoid(5) = 0.993 keeps the parameters (reference: U(4, 5))
    forget_bias: float = 5.0


@dataclass
class IMAMLConfig(InnerLoopConfig):
    """iMAML (Rajeswaran et al., 2019): implicit meta-gradients through a proximal inner objective."""

    # the algorithm's import path (a metarun.algos.Algorithm); your own: my_module.ALGORITHM
    _target_: str = "metarun.algos.imaml.ALGORITHM"
    name: str = "imaml"
    # gradient-descent step size on the inner problem, support loss + lam/2 |phi - theta|^2 (inner_lr * lam < 2)
    inner_lr: float = positive(0.1)
    inner_steps: int = positive(16)  # inner steps from theta in training (the paper's Omniglot: 16 5-way, 25 20-way)
    test_inner_steps: int = positive(16)  # the same proximal problem's steps at validation and meta-test
    lam: float = positive(2.0)  # the proximal regularisation strength lambda (2.0 in the paper's experiments)
    cg_steps: int = positive(5)  # conjugate-gradient iterations solving (I + H/lam) g = query gradient (5 in the paper)
    # added to the system's diagonal, ((1 + cg_damping) I + H/lam) g = query gradient, which keeps CG stable where
    # the support loss has negative curvature (>= 0; the authors' code uses 1.0; the paper's system is 0.0)
    cg_damping: float = 0.0


@dataclass
class SinusoidConfig:
    """Sinusoid regression tasks (Finn et al., 2017, section 5.1)."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.sinusoid.DATASET"
    name: str = "sinusoid"
    shots: int = positive(10)  # support points per task (K)
    queries: int = positive(10)  # query points per task
    amplitude: List[float] = field(default_factory=lambda: [0.1, 5.0])  # drawn uniformly from this range
    phase: List[float] = field(default_factory=lambda: [0.0, math.pi])  # drawn uniformly from this range
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])  # inputs drawn uniformly from this range


@dataclass
class SinusoidLineConfig(SinusoidConfig):
    """Sinusoid or line regression tasks (Finn, Xu & Levine, 2018): MAML's sinusoids and lines, half each."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.sinusoid_line.DATASET"
    name: str = "sinusoid_line"
    slope: List[float] = field(default_factory=lambda: [-3.0, 3.0])  # a line's slope, drawn uniformly from this range
    intercept: List[float] = field(default_factory=lambda: [-3.0, 3.0])  # a line's intercept, drawn uniformly
    noise_std: float = 0.3  # standard deviation of the Gaussian noise added to every target (0: none)


@dataclass
class HarmonicConfig:
    """Harmonic regression tasks (Lacoste et al., 2018), as torchmeta's Harmonic:
    y = a1 sin(w x + b1) + a2 sin(2 w x + b2) with a1, a2 ~ N(0, 1) and x ~ N(mu_x, 1)."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.harmonic.DATASET"
    name: str = "harmonic"
    shots: int = positive(10)  # support points per task (K)
    queries: int = positive(10)  # query points per task
    frequency: List[float] = field(default_factory=lambda: [5.0, 7.0])  # w, drawn uniformly from this range
    phase: List[float] = field(default_factory=lambda: [0.0, 2 * math.pi])  # b1 and b2, each drawn uniformly
    x_mean: List[float] = field(default_factory=lambda: [-4.0, 4.0])  # a task's input mean mu_x, drawn uniformly
    noise_std: float = 0.0  # standard deviation of the Gaussian noise added to every target (0: none)


@dataclass
class VariableEpisodesConfig:
    """Meta-Dataset's variable episodes (Triantafillou et al., 2020, appendix; metarun/data/variable_episodes.py),
    with the paper's values: ways uniform in [min_ways, max_ways] (within a hierarchy node where the split has
    one), queries per class min(max_queries, half the smallest class), a support set of at most max_support
    images shared between its classes with log-uniform imbalance."""

    min_ways: int = positive(5)
    max_ways: int = positive(50)  # also the outputs of a fixed head (the MAML family's)
    max_queries: int = positive(10)  # query images per class at most
    max_support: int = positive(500)  # support images per episode at most
    max_support_per_class: int = positive(100)  # what one class adds to the support budget at most
    min_log_weight: float = math.log(0.5)  # the range of each class's log share weight (its imbalance)
    max_log_weight: float = math.log(2.0)
    min_class_images: int = 0  # classes with fewer images are never drawn
    ignore_dag: bool = False  # draw ILSVRC's classes without its WordNet DAG
    ignore_bilevel: bool = False  # draw Omniglot's characters without its alphabets
    ignore_hierarchy_probability: float = 0.0  # the share of episodes drawn without the hierarchy


@dataclass
class EpisodeConfig:
    """What the image datasets share: N-way K-shot episode sizes (5-way 1-shot with 15 queries per class by
    default) or Meta-Dataset's variable episodes, and the folder of their decoded caches."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = MISSING
    ways: int = positive(5)  # classes per task (N)
    shots: int = positive(1)  # support images per class (K)
    queries: int = positive(15)  # query images per class
    cache_dir: str = "${paths.cache_dir}"  # where the decoded images are cached, once per data version
    # where a split's images live during the run: device (copied there once), host (memory-mapped cache, each
    # batch's images copied to the device), auto (device when the split fits in half its free memory)
    store_on: str = choice("auto", "device", "host")
    # every split's episodes draw their classes from one alphabet, the first level of the class names
    # (<alphabet>/<character>; an image tree's top folders), as in Lake et al.'s Omniglot runs
    within_alphabet: bool = False
    # the i-th image of every class is drawer i's (Omniglot's <id>_<drawer>.png), and an episode's support and
    # query images come from different drawers, the same ones for all its classes
    drawers_apart: bool = False
    # fixed: ways x (shots + queries) images per episode; variable: Meta-Dataset's episodes (dataset.variable),
    # of 5-50 ways and imbalanced shots, within one alphabet where within_alphabet is set
    episodes: str = choice("fixed", "variable")
    variable: VariableEpisodesConfig = field(default_factory=VariableEpisodesConfig)


@dataclass
class AffineConfig:
    """Ranges of the random affine distortions of handwriting (Koch et al., 2015; ``augment.random_affine``)."""

    rotation: float = 10.0  # degrees either way
    shear: float = 0.3  # shear factor along each axis, either way
    scale: List[float] = field(default_factory=lambda: [0.8, 1.2])  # along each axis, drawn apart
    translate: float = 0.02  # fraction of the side along each axis, either way (2 px of 105)


@dataclass
class StrokesConfig:
    """Meta-training images re-drawn from their pen strokes with each stroke perturbed (``metarun.data.strokes``):
    new drawers of the same character. The ranges are ``strokes.redraw``'s, checked by ``strokes.check_strokes``."""

    # stroke sets under root, together holding a drawing for every meta-training image (Omniglot's
    # strokes_background for images_background); empty: no image is re-drawn
    files: List[str] = field(default_factory=list)
    fraction: float = 0.5  # the share of meta-training images re-drawn; the rest keep their own pixels
    rotation: float = 10.0  # degrees either way, per stroke about its centre
    scale: List[float] = field(default_factory=lambda: [0.9, 1.1])  # per stroke along each axis, drawn apart
    shear: float = 0.1  # shear factor per stroke along each axis, either way
    translate: float = 0.02  # shift per stroke along each axis, a fraction of the side either way
    jitter: float = 0.01  # offsets of the knots along a stroke, a fraction of the side either way
    width: List[float] = field(default_factory=lambda: [0.04, 0.058])  # pen width per image, a fraction of the side
    drop: float = 0.1  # probability that a stroke is left out (never every stroke of a drawing)
    split: float = 0.1  # probability that a stroke is cut in two with a small gap


@dataclass
class FilesConfig(EpisodeConfig):
    """A published image dataset read from files under ``root``."""

    root: str = MISSING  # the folder of the dataset's files
    # fetch the official files when missing (md5-checked); false: a missing file is an error at once
    download: bool = True


@dataclass
class OmniglotConfig(FilesConfig):
    """Omniglot (Lake et al., 2015) with the vinyals, lake or folders split (see metarun/data/omniglot.py)."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.omniglot.DATASET"
    name: str = "omniglot"
    root: str = "${paths.data_dir}/omniglot"  # the folder of the sets (zips, folders or torchmeta's data.hdf5)
    split: str = choice("vinyals", "lake", "folders")  # which characters train, validate and test
    background: str = "images_background"  # vinyals, lake: the sets under root
    evaluation: str = "images_evaluation"  # vinyals, lake: the meta-test set
    # lake, and folders without val: train alphabets held out for validation (0: validate on the train alphabets,
    # which then only watch training: no alphabet is held out)
    val_alphabets: int = 5
    train: List[str] = field(default_factory=list)  # folders: sets under root (or absolute paths)
    val: List[str] = field(default_factory=list)  # folders: empty = val_alphabets held out from train
    test: List[str] = field(default_factory=list)  # folders: the meta-test sets
    exclude_train_alphabets: bool = True  # folders: val/test drop alphabets that train has
    rotations: Optional[bool] = None  # null: on for vinyals, off otherwise
    mirrors: bool = False  # each character mirrored left-right is a new class too (x2, after rotations)
    # the splits that rotations and mirrors extend with new classes
    extended_splits: List[str] = field(default_factory=lambda: ["train", "val", "test"])
    image_size: int = positive(28)  # pixels per side after resizing (the files are 105)
    augment: bool = False  # random affine distortions (dataset.affine) of meta-training images, on the device
    affine: AffineConfig = field(default_factory=AffineConfig)
    strokes: StrokesConfig = field(default_factory=StrokesConfig)  # re-drawing training images from pen strokes


@dataclass
class ImageFolderConfig(EpisodeConfig):
    """Your own class-folder trees (folders or zips) for meta-train, validation and meta-test."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.imagefolder.DATASET"
    name: str = "imagefolder"
    train: Any = MISSING  # a folder/zip or a list of them
    val: Any = MISSING  # validation classes: a folder/zip or a list of them
    test: Any = MISSING  # meta-test classes: a folder/zip or a list of them
    image_size: int = positive(84)  # pixels per side after resizing
    channels: int = 3  # 1 (grey) or 3 (RGB)
    mean: List[float] = field(default_factory=lambda: [0.0])  # per-channel normalisation after scaling to [0, 1]
    std: List[float] = field(default_factory=lambda: [1.0])


@dataclass
class PhotosConfig(FilesConfig):
    """A published dataset of RGB photographs: their size and the metric-learning line's augmentation."""

    image_size: int = positive(84)  # pixels per side
    augment: bool = False  # random crop with padding and horizontal flip of training images, on the device


@dataclass
class MiniImageNetConfig(PhotosConfig):
    """miniImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split; see metarun.data.miniimagenet."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.miniimagenet.DATASET"
    name: str = "miniimagenet"
    root: str = "${paths.data_dir}/miniimagenet"  # pickles, torchmeta's hdf5 or images/ + csv files


@dataclass
class TieredImageNetConfig(MiniImageNetConfig):
    """tieredImageNet (Ren et al., 2018): 351/97/160 classes; see metarun.data.tieredimagenet."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.tieredimagenet.DATASET"
    name: str = "tieredimagenet"
    root: str = "${paths.data_dir}/tieredimagenet"  # learn2learn's/Ren et al.'s pickles or torchmeta's hdf5


@dataclass
class CIFARFSConfig(PhotosConfig):
    """CIFAR-FS (Bertinetto et al., 2019): CIFAR-100 classes split 64/16/20; see metarun.data.cifar."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.cifar.CIFAR_FS"
    name: str = "cifarfs"
    root: str = "${paths.data_dir}/cifar100"  # cifar-100-python.tar.gz or its extracted cifar-100-python/
    image_size: int = positive(32)  # pixels per side


@dataclass
class FC100Config(CIFARFSConfig):
    """FC100 (Oreshkin et al., 2018): CIFAR-100 split by superclass 12/4/4 (60/20/20 classes); see metarun.data.cifar."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.cifar.FC100"
    name: str = "fc100"


@dataclass
class CUBConfig(PhotosConfig):
    """CUB-200-2011 (Wah et al., 2011) with the 100/50/50 split of Chen et al. (2019); see metarun.data.cub."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.cub.DATASET"
    name: str = "cub"
    root: str = "${paths.data_dir}/cub"  # CUB_200_2011.tgz, its extracted CUB_200_2011/ or torchmeta's hdf5


@dataclass
class MetaDatasetConfig(EpisodeConfig):
    """Meta-Dataset (Triantafillou et al., 2020): ten sources read from the official conversion's TFRecords, each
    episode from one training source; see metarun/data/metadataset.py."""

    # the dataset's import path; your own: my_module.DATASET
    _target_: str = "metarun.data.metadataset.DATASET"
    name: str = "metadataset"
    root: str = "${paths.data_dir}/metadataset"  # one folder per source: dataset_spec.json and a .tfrecords per class
    # the training sources (each episode from one, drawn uniformly): the paper's "all datasets"; [ilsvrc_2012]
    # for "ImageNet only"
    sources: List[str] = field(default_factory=lambda: ["ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd",
                                                        "quickdraw", "fungi", "vgg_flower"])
    image_size: int = choice(84, 126)  # pixels per side (126 for the paper's ResNet-18 at higher resolution)
    episodes: str = choice("variable", "fixed")


@dataclass
class MLPConfig:
    """Fully connected ReLU network."""

    _target_: str = "metarun.models.mlp.MLP"
    hidden: List[int] = field(default_factory=lambda: [40, 40])  # widths of the hidden layers


@dataclass
class ResNet12Config:
    """ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): residual blocks of 64-160-320-640 channels by default."""

    _target_: str = "metarun.models.resnet12.ResNet12"
    # channels of each residual block, one entry per block (3 convolutions and a max-pool each): [32,64] is a
    # two-block ResNet-6; entries must be > 0 (the model checks them when it is built, at start-up)
    widths: List[int] = field(default_factory=lambda: [64, 160, 320, 640])
    # batch: batch statistics (transductive) | running: averages used at evaluation (metarun/models/batchnorm.py)
    norm: str = choice(*NORMS)


@dataclass
class ResNet18Config:
    """ResNet-18 as Meta-Dataset's code builds it (Triantafillou et al., 2020): 64-128-256-512 channels by default."""

    _target_: str = "metarun.models.resnet18.ResNet18"
    # channels of each stage of two basic blocks, one entry per stage (the first is also the stem's); entries must
    # be > 0 (the model checks them when it is built, at start-up)
    widths: List[int] = field(default_factory=lambda: [64, 128, 256, 512])
    # batch: batch statistics (transductive) | running: averages used at evaluation (metarun/models/batchnorm.py)
    norm: str = choice(*NORMS)


@dataclass
class Conv4Config:
    """Conv-4 backbone (Vinyals et al., 2016; Finn et al., 2017), or Conv-N with ``depth``."""

    _target_: str = "metarun.models.conv4.Conv4"
    width: int = positive(64)  # channels of every convolution
    # conv blocks (Conv-N); only the first 4 halve the image, as in Chen et al. (2019)'s Conv-6, so the head's
    # input size stays Conv-4's; 4 is the papers' Conv-4
    depth: int = positive(4)
    max_pool: bool = True  # false: stride-2 convolutions, MAML's Omniglot network
    # batch: batch statistics (transductive) | running: averages used at evaluation (metarun/models/batchnorm.py)
    norm: str = choice(*NORMS)


@dataclass
class HardwareConfig:
    """Where and how the meta-batch runs."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # how tasks map over a meta-batch (threads: the loop's tasks on every CPU core); auto times them on a
    # setting's first run
    # and keeps the fastest (hardware.tuning_file)
    task_parallel: str = choice("auto", "vmap", "loop", "threads")
    # torch's intra-op threads: auto sizes them from the model and the cores this job has (metarun/hardware.py)
    num_threads: Any = "auto"  # auto | a positive integer
    deterministic: bool = False  # torch's deterministic algorithms (slower)
    distributed: bool = False  # true under torchrun: tasks and evaluation episodes split across ranks
    # autocast around the meta-loss and evaluation (fp16: CUDA only, with loss scaling)
    precision: str = choice("fp32", "bf16", "fp16")
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions
    channels_last: bool = False  # convolution weights in channels-last memory format
    compile: bool = False  # torch.compile the per-task function
    # auto's choice per machine and setting, reused so a rerun picks the same mode (bit for bit the same run);
    # null: time the modes at every start (metarun/mode_memory.py)
    tuning_file: Optional[str] = "${paths.cache_dir}/task_parallel.json"


@dataclass
class WandbConfig:
    """Weights & Biases tracking; group and name of null are derived from the sweep and the overrides."""

    # where runs go: the wandb server, local files, nowhere
    mode: str = choice("online", "offline", "disabled", default="disabled")
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

    # outer (meta) updates; the default job (sinusoid MAML) learns in this many, about 20 s on one core
    iterations: int = positive(2000)
    meta_batch_size: int = positive(25)  # tasks per outer update
    log_every: int = positive(100)  # iterations between metrics lines
    val_every: int = positive(1000)  # iterations between validations (best.pt keeps the best)
    checkpoint_every: int = positive(1000)  # iterations between writes of checkpoints/last.pt
    grad_clip: Optional[float] = positive(None)  # clip the meta-gradient's norm to this; null = no clipping
    # wall-clock budget: stop (validate, checkpoint, meta-test) at the first iteration past it; null = none
    max_minutes: Optional[float] = positive(None)
    # diverging: stop as at a non-finite loss once an iteration's train loss passes this many times the run's first
    # one; null = never
    diverge_factor: Optional[float] = positive(1000.0)
    max_loss: Optional[float] = positive(None)  # ... or passes this value; null = no bound
    # a checkpoint whose tensors of the same name and shape start this run (a pre-trained backbone; a new run
    # only, not a resumed one); null = the model's own initialisation
    init_from: Optional[str] = None


@dataclass
class OptimConfig:
    """The meta-optimiser and its learning-rate schedule over ``train.iterations``."""

    name: str = choice("adam", "sgd")  # the meta-optimiser (plain SGD: Reptile's interpolation)
    lr: float = positive(0.001)  # outer (meta) learning rate
    # linear and cosine (MAML++) go from lr to final_lr over train.iterations; step: x gamma per step_every
    schedule: str = choice("constant", "linear", "cosine", "step")
    final_lr: float = 0.0  # where linear and cosine end
    step_every: int = positive(2000)  # step: iterations between decays
    gamma: float = positive(0.5)  # step: the factor of each decay


@dataclass
class EvalConfig:
    """Fixed evaluation episodes; shots/queries/ways of null mean 'as in training'."""

    episodes: int = positive(600)  # meta-test episodes (mean ± 95% CI)
    val_episodes: int = positive(100)  # episodes of each validation
    batch_size: int = positive(100)  # episodes evaluated at once
    seed: int = 0  # the fixed episodes; the same for every algorithm and seed
    ways: Optional[int] = positive(None)  # null: dataset.ways
    shots: Optional[int] = positive(None)  # null: dataset.shots
    queries: Optional[int] = positive(None)  # null: dataset.queries
    # true: each query set is normalised as one batch (the MAML papers' setting); false: each query with the
    # support set's batch statistics plus its own (Nichol et al., 2018's non-transductive evaluation)
    transductive: bool = True
    # the sources a multi-source dataset (metadataset) is meta-tested on, each scored apart; null: all it has
    sources: Optional[List[str]] = None
    # test-time augmentation: each support image joined by this many random distortions of itself (the dataset's
    # training augmentation, dataset.augment), part of the fixed episode; 0: none
    support_copies: int = 0


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
    mode: str = choice("train", "eval")  # eval re-evaluates ``checkpoint`` with this command's overrides
    checkpoint: Optional[str] = None  # mode=eval: the checkpoint to re-evaluate
    # true: load checkpoints that a safe load refuses (their pickle asks for code); only for files you trust
    trust_checkpoint: bool = False
    # true: continue from checkpoints/last.pt in paths.output_dir; auto: continue when it exists; false: start over
    resume: Any = choice(True, False, "auto", default="auto")


SCHEMAS = {
    "algo": {"maml": MAMLConfig, "anil": ANILConfig, "metasgd": MetaSGDConfig, "reptile": ReptileConfig,
             "protonet": ProtoNetConfig, "matchingnet": MatchingNetConfig, "relationnet": RelationNetConfig,
             "r2d2": R2D2Config, "metaoptnet_svm": MetaOptNetSVMConfig, "baseline": BaselineConfig,
             "metalstm": MetaLSTMConfig, "imaml": IMAMLConfig},
    "dataset": {"sinusoid": SinusoidConfig, "sinusoid_line": SinusoidLineConfig, "harmonic": HarmonicConfig,
                "miniimagenet": MiniImageNetConfig, "omniglot": OmniglotConfig,
                "imagefolder": ImageFolderConfig, "tieredimagenet": TieredImageNetConfig, "cifarfs": CIFARFSConfig,
                "fc100": FC100Config, "cub": CUBConfig, "metadataset": MetaDatasetConfig},
    "model": {"mlp": MLPConfig, "conv4": Conv4Config, "resnet12": ResNet12Config, "resnet18": ResNet18Config},
    "hardware": {"base": HardwareConfig},
    "logger": {"base": LoggerConfig},
    "paths": {"base": PathsConfig},
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore, the ``dirname``, ``swept_dirname`` and ``metarun_help`` resolvers
    and, with the sweep extra, metarun's local launcher (idempotent)."""
    from metarun.help import help_section  # here: help.py walks the configs with this module's walk
    from metarun.run_names import dirname, swept_dirname

    OmegaConf.register_new_resolver("dirname", dirname, replace=True)
    OmegaConf.register_new_resolver("swept_dirname", swept_dirname, replace=True)
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


def check(cfg: DictConfig) -> None:
    """Reject keys no schema has, values still missing, values outside their field's ``choice`` or ``positive``
    range and combinations that type checks cannot catch, naming the key and the fix.

    Raises:
        ValueError: on the first offending key.
    """
    missing = []
    for key, node, schema in walk(cfg):
        known = list(field_rules(schema)) if is_dataclass(schema) else None
        if known is not None and key.rpartition(".")[2] not in known:
            raise ValueError(unknown_key(key, known))
        if node._is_missing():
            missing.append(key)
    if missing:
        raise ValueError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no value; set "
                         f"{' '.join(f'{key}=...' for key in missing)} on the command line (metarun --cfg job prints every key)")
    check_fields(cfg)
    threads = cfg.hardware.num_threads
    if threads != "auto" and (type(threads) is not int or threads < 1):  # type(), as true and false are ints too
        raise ValueError(f"hardware.num_threads={threads} is not auto or a positive integer; set "
                         "hardware.num_threads=auto (sized from the model and the free cores) or e.g. 1")
    if cfg.hardware.task_parallel == "threads" and str(cfg.hardware.device).startswith("cuda"):
        raise ValueError("hardware.task_parallel=threads spreads tasks over CPU cores; on a GPU use vmap, loop or auto")
    for group in ("algo", "dataset"):  # results.json, run names and the trackers name them (your own ones too)
        if not cfg[group].get("name"):
            raise ValueError(f"{group}.name is not set; give the {group} option's YAML a name: line (e.g. name: "
                             f"my_{group}), which results.json and run names show")
    if cfg.mode == "eval" and not cfg.checkpoint:
        raise ValueError("mode=eval needs checkpoint=PATH (a run's checkpoints/best.pt or last.pt)")


def check_fields(node: DictConfig, prefix: str = "") -> None:
    """Apply each schema field's ``choice`` and ``positive`` metadata to its value below ``node`` (keys named with
    ``prefix``); keys without a schema field, and missing values, are left to the caller.

    Raises:
        ValueError: on the first value out of its range.
    """
    for key, child, schema in walk(node, prefix):
        rule = field_rules(schema).get(key.rpartition(".")[2])
        if not rule or child._is_missing():
            continue
        value = OmegaConf.select(node, key[len(prefix):])
        if rule.get("positive") and value is not None and not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}; set e.g. {key}={_example(value)}")
        allowed = rule.get("choices")
        if allowed and not any(type(value) is type(option) and value == option for option in allowed):
            raise ValueError(f"{key}={written(value)} is not one of {', '.join(written(o) for o in allowed)}")


def validated(node: DictConfig, schema: type, prefix: str) -> Any:
    """``node`` (a config subtree such as ``cfg.algo``) checked against the dataclass ``schema`` and returned as
    its instance: the settings of an algorithm or dataset whose YAML has no registered schema.

    Interpolations resolve where ``node`` sits; ``_target_``, the import path that picked ``schema``, is dropped
    when ``schema`` has no such field.

    Raises:
        ValueError: one line naming ``prefix.<key>``: a key ``schema`` lacks, a value of the wrong type or missing,
            or one outside its field's ``choice`` or ``positive`` range.
    """
    values = OmegaConf.to_container(node, resolve=True)
    if "_target_" not in field_rules(schema):
        values.pop("_target_", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        check_fields(merged, f"{prefix}.")
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        known = list(field_rules(err.object_type)) if is_dataclass(err.object_type) else []
        raise ValueError(unknown_key(f"{prefix}.{err.full_key}", known)) from None
    except MissingMandatoryValue as err:
        key = f"{prefix}.{err.full_key}"
        raise ValueError(f"{key} has no value; set {key}=... on the command line") from None
    except OmegaConfBaseException as err:
        key = f"{prefix}.{err.full_key}".rstrip(".")
        raise ValueError(f"{key}: {str(err.msg).splitlines()[0]} ({schema.__name__})") from None


@lru_cache(maxsize=None)
def field_rules(schema: Any) -> dict:
    """{field name: its ``choice``/``positive`` metadata} of a schema dataclass, in field order; a field that a
    subclass redefines with a plain default keeps its base's rule. Empty for anything else (a plain dict's None)."""
    if not is_dataclass(schema):
        return {}
    rules = {}
    for cls in reversed(schema.__mro__):
        for f in fields(cls) if is_dataclass(cls) else ():
            rules[f.name] = f.metadata or rules.get(f.name, {})
    return {f.name: rules[f.name] for f in fields(schema)}


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


def written(value: Any) -> str:
    """``value`` as the command line writes it: true, not True; [64,160], not [64, 160]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{','.join(map(written, value))}]"
    return str(value)
