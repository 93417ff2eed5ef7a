"""The settings schema of every built-in dataset (``dataset.*``), each typing its ``conf/dataset`` YAML: the
regression task families, then the episodic image datasets and what they share.

Each sits here rather than beside its reader (``metarun/data/``), which needs torch: the CLI composes and checks
a config before it imports torch. A dataset of your own keeps its schema beside its code, subclassing
``DatasetConfig`` (or ``EpisodeConfig`` for N-way K-shot images) as these do.
"""

import math
from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from metarun.config.fields import choice, positive, schema, setting


@dataclass
class DatasetConfig:
    """What every dataset's settings have: where its code is, and its name."""

    _target_: str = setting(MISSING, help="the dataset's import path; your own: my_module.DATASET")
    name: str = setting(MISSING, help="the dataset (set by dataset=...), as results.json and run names show it")


@schema("dataset", "sinusoid")
@dataclass
class SinusoidConfig(DatasetConfig):
    """Sinusoid regression tasks (Finn et al., 2017, section 5.1)."""

    _target_: str = "metarun.data.sinusoid.DATASET"
    name: str = "sinusoid"
    shots: int = positive(10, help="support points per task (K)")
    queries: int = positive(10, help="query points per task")
    amplitude: List[float] = setting([0.1, 5.0], help="drawn uniformly from this range")
    phase: List[float] = setting([0.0, math.pi], help="drawn uniformly from this range")
    x_range: List[float] = setting([-5.0, 5.0], help="inputs drawn uniformly from this range")


@schema("dataset", "sinusoid_line")
@dataclass
class SinusoidLineConfig(SinusoidConfig):
    """Sinusoid or line regression tasks (Finn, Xu & Levine, 2018): MAML's sinusoids and lines, half each."""

    _target_: str = "metarun.data.sinusoid_line.DATASET"
    name: str = "sinusoid_line"
    slope: List[float] = setting([-3.0, 3.0], help="a line's slope, drawn uniformly from this range")
    intercept: List[float] = setting([-3.0, 3.0], help="a line's intercept, drawn uniformly")
    noise_std: float = setting(0.3, help="standard deviation of the Gaussian noise added to every target (0: none)")


@schema("dataset", "harmonic")
@dataclass
class HarmonicConfig(DatasetConfig):
    """Harmonic regression tasks (Lacoste et al., 2018), as torchmeta's Harmonic:
    y = a1 sin(w x + b1) + a2 sin(2 w x + b2) with a1, a2 ~ N(0, 1) and x ~ N(mu_x, 1)."""

    _target_: str = "metarun.data.harmonic.DATASET"
    name: str = "harmonic"
    shots: int = positive(10, help="support points per task (K)")
    queries: int = positive(10, help="query points per task")
    frequency: List[float] = setting([5.0, 7.0], help="w, drawn uniformly from this range")
    phase: List[float] = setting([0.0, 2 * math.pi], help="b1 and b2, each drawn uniformly")
    x_mean: List[float] = setting([-4.0, 4.0], help="a task's input mean mu_x, drawn uniformly")
    noise_std: float = setting(0.0, help="standard deviation of the Gaussian noise added to every target (0: none)")


@dataclass
class VariableEpisodesConfig:
    """Meta-Dataset's variable episodes (Triantafillou et al., 2020, appendix; metarun/data/sampling/variable_episodes.py),
    with the paper's values: ways uniform in [min_ways, max_ways] (within a hierarchy node where the split has
    one), queries per class min(max_queries, half the smallest class), a support set of at most max_support
    images shared between its classes with log-uniform imbalance."""

    min_ways: int = positive(5)
    max_ways: int = positive(50, help="also the outputs of a fixed head (the MAML family's)")
    max_queries: int = positive(10, help="query images per class at most")
    max_support: int = positive(500, help="support images per episode at most")
    max_support_per_class: int = positive(100, help="what one class adds to the support budget at most")
    min_log_weight: float = setting(math.log(0.5), help="the range of each class's log share weight (its imbalance)")
    max_log_weight: float = math.log(2.0)
    min_class_images: int = setting(0, help="classes with fewer images are never drawn")
    ignore_dag: bool = setting(False, help="draw ILSVRC's classes without its WordNet DAG")
    ignore_bilevel: bool = setting(False, help="draw Omniglot's characters without its alphabets")
    ignore_hierarchy_probability: float = setting(0.0, help="the share of episodes drawn without the hierarchy")


@dataclass
class EpisodeConfig(DatasetConfig):
    """What the image datasets share: N-way K-shot episode sizes (5-way 1-shot with 15 queries per class by
    default) or Meta-Dataset's variable episodes, and the folder of their decoded caches."""

    ways: int = positive(5, help="classes per task (N)")
    shots: int = positive(1, help="support images per class (K)")
    queries: int = positive(15, help="query images per class")
    cache_dir: str = setting("${paths.cache_dir}", help="where the decoded images are cached, once per data version")
    store_on: str = choice(
        "auto", "device", "host", help="where a split's images live during the run: device (copied there once), host "
                                       "(memory-mapped cache, each batch's images copied to the device), auto (device "
                                       "when the split fits in half its free memory)")
    episodes_within: str = choice(
        "split", "group",
        help="where an episode's classes come from: split (any of the split's) or group (one class group, the first "
             "level of the class names, <group>/<class>: Omniglot's alphabets, as in Lake et al.'s runs, or an image "
             "tree's top folders)")
    episodes: str = choice("fixed", "variable", help="fixed: ways x (shots + queries) images per episode; variable: "
                                                     "Meta-Dataset's episodes (dataset.variable), of 5-50 ways and "
                                                     "imbalanced shots, within one class group where episodes_within "
                                                     "is group")
    variable: VariableEpisodesConfig = setting(factory=VariableEpisodesConfig)


@dataclass
class AffineConfig:
    """Ranges of the random affine distortions of handwriting (Koch et al., 2015; ``augment.random_affine``)."""

    rotation: float = setting(10.0, help="degrees either way")
    shear: float = setting(0.3, help="shear factor along each axis, either way")
    scale: List[float] = setting([0.8, 1.2], help="along each axis, drawn apart")
    translate: float = setting(0.02, help="fraction of the side along each axis, either way (2 px of 105)")


@dataclass
class StrokesConfig:
    """Meta-training images re-drawn from their pen strokes with each stroke perturbed (``metarun.data.sampling.strokes``):
    new drawers of the same character. The ranges are ``strokes.redraw``'s, checked by ``strokes.check_strokes``."""

    files: List[str] = setting([], help="stroke sets under root, together holding a drawing for every "
                                                  "meta-training image (Omniglot's strokes_background for "
                                                  "images_background); empty: no image is re-drawn")
    fraction: float = setting(0.5, help="the share of meta-training images re-drawn; the rest keep their own pixels")
    rotation: float = setting(10.0, help="degrees either way, per stroke about its centre")
    scale: List[float] = setting([0.9, 1.1], help="per stroke along each axis, drawn apart")
    shear: float = setting(0.1, help="shear factor per stroke along each axis, either way")
    translate: float = setting(0.02, help="shift per stroke along each axis, a fraction of the side either way")
    jitter: float = setting(0.01, help="offsets of the knots along a stroke, a fraction of the side either way")
    width: List[float] = setting([0.04, 0.058], help="pen width per image, a fraction of the side")
    drop: float = setting(0.1, help="probability that a stroke is left out (never every stroke of a drawing)")
    split: float = setting(0.1, help="probability that a stroke is cut in two with a small gap")


@dataclass
class FilesConfig(EpisodeConfig):
    """A published image dataset read from files under ``root``."""

    root: str = setting(MISSING, help="the folder of the dataset's files")
    download: bool = setting(True, help="fetch the official files when missing (md5-checked); false: a missing file "
                                        "is an error at once")


@schema("dataset", "omniglot")
@dataclass
class OmniglotConfig(FilesConfig):
    """Omniglot (Lake et al., 2015) with the vinyals, lake or folders split (see metarun/data/omniglot.py)."""

    _target_: str = "metarun.data.omniglot.DATASET"
    name: str = "omniglot"
    root: str = setting(
        "${paths.data_dir}/omniglot",
        help="the folder of the sets (zips, folders or torchmeta's data.hdf5)")
    split: str = choice("vinyals", "lake", "folders", help="which characters train, validate and test")
    background: str = setting("images_background", help="vinyals, lake: the sets under root")
    evaluation: str = setting("images_evaluation", help="vinyals, lake: the meta-test set")
    val_alphabets: int = setting(5, help="lake, and folders without val: train alphabets held out for validation (0: "
                                         "validate on the train alphabets, which then only watch training: no "
                                         "alphabet is held out)")
    train: List[str] = setting([], help="folders: sets under root (or absolute paths)")
    val: List[str] = setting([], help="folders: empty = val_alphabets held out from train")
    test: List[str] = setting([], help="folders: the meta-test sets")
    exclude_train_alphabets: bool = setting(True, help="folders: val/test drop alphabets that train has")
    rotations: Optional[bool] = setting(None, help="null: on for vinyals, off otherwise")
    mirrors: bool = setting(False, help="each character mirrored left-right is a new class too (x2, after rotations)")
    extended_splits: List[str] = setting(
        ["train", "val", "test"], help="the splits that rotations and mirrors extend with new classes")
    image_size: int = positive(28, help="pixels per side after resizing (the files are 105)")
    drawers_apart: bool = setting(False, help="an episode's support and query images come from different drawers, "
                                              "the same ones for all its classes (the i-th image of a character is "
                                              "drawer i's, <id>_<drawer>.png)")
    augment: bool = setting(False, help="random affine distortions (dataset.affine) of meta-training images, on the "
                                        "device")
    affine: AffineConfig = setting(factory=AffineConfig)
    strokes: StrokesConfig = setting(factory=StrokesConfig, help="re-drawing training images from pen strokes")


@schema("dataset", "imagefolder")
@dataclass
class ImageFolderConfig(EpisodeConfig):
    """Your own class-folder trees (folders or zips) for meta-train, validation and meta-test."""

    _target_: str = "metarun.data.imagefolder.DATASET"
    name: str = "imagefolder"
    train: Any = setting(MISSING, help="a folder/zip or a list of them")
    val: Any = setting(MISSING, help="validation classes: a folder/zip or a list of them")
    test: Any = setting(MISSING, help="meta-test classes: a folder/zip or a list of them")
    image_size: int = positive(84, help="pixels per side after resizing")
    channels: int = setting(3, help="1 (grey) or 3 (RGB)")
    mean: List[float] = setting([0.0], help="per-channel normalisation after scaling to [0, 1]")
    std: List[float] = setting([1.0])


@dataclass
class PhotosConfig(FilesConfig):
    """A published dataset of RGB photographs: their size and the metric-learning line's augmentation."""

    image_size: int = positive(84, help="pixels per side")
    augment: bool = setting(False, help="random crop with padding and horizontal flip of training images, on the "
                                        "device")


@schema("dataset", "miniimagenet")
@dataclass
class MiniImageNetConfig(PhotosConfig):
    """miniImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) split; see metarun.data.miniimagenet."""

    _target_: str = "metarun.data.miniimagenet.DATASET"
    name: str = "miniimagenet"
    root: str = setting("${paths.data_dir}/miniimagenet", help="pickles, torchmeta's hdf5 or images/ + csv files")


@schema("dataset", "tieredimagenet")
@dataclass
class TieredImageNetConfig(MiniImageNetConfig):
    """tieredImageNet (Ren et al., 2018): 351/97/160 classes; see metarun.data.tieredimagenet."""

    _target_: str = "metarun.data.tieredimagenet.DATASET"
    name: str = "tieredimagenet"
    root: str = setting(
        "${paths.data_dir}/tieredimagenet",
        help="learn2learn's/Ren et al.'s pickles or torchmeta's hdf5")


@schema("dataset", "cifarfs")
@dataclass
class CIFARFSConfig(PhotosConfig):
    """CIFAR-FS (Bertinetto et al., 2019): CIFAR-100 classes split 64/16/20; see metarun.data.cifar."""

    _target_: str = "metarun.data.cifar.CIFAR_FS"
    name: str = "cifarfs"
    root: str = setting("${paths.data_dir}/cifar100", help="cifar-100-python.tar.gz or its extracted cifar-100-python/")
    image_size: int = positive(32, help="pixels per side")


@schema("dataset", "fc100")
@dataclass
class FC100Config(CIFARFSConfig):
    """FC100 (Oreshkin et al., 2018): CIFAR-100 split by superclass 12/4/4 (60/20/20 classes); see metarun.data.cifar."""

    _target_: str = "metarun.data.cifar.FC100"
    name: str = "fc100"


@schema("dataset", "cub")
@dataclass
class CUBConfig(PhotosConfig):
    """CUB-200-2011 (Wah et al., 2011) with the 100/50/50 split of Chen et al. (2019); see metarun.data.cub."""

    _target_: str = "metarun.data.cub.DATASET"
    name: str = "cub"
    root: str = setting("${paths.data_dir}/cub", help="CUB_200_2011.tgz, its extracted CUB_200_2011/ or torchmeta's "
                                                      "hdf5")


@schema("dataset", "metadataset")
@dataclass
class MetaDatasetConfig(EpisodeConfig):
    """Meta-Dataset (Triantafillou et al., 2020): ten sources read from the official conversion's TFRecords, each
    episode from one training source; see metarun/data/metadataset.py."""

    _target_: str = "metarun.data.metadataset.DATASET"
    name: str = "metadataset"
    root: str = setting(
        "${paths.data_dir}/metadataset",
        help="one folder per source: dataset_spec.json and a .tfrecords per class")
    sources: List[str] = setting(
        ["ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi", "vgg_flower"],
        help="the training sources (each episode from one, drawn uniformly): the paper's \"all datasets\"; "
             '[ilsvrc_2012] for "ImageNet only"')
    image_size: int = choice(84, 126, help="pixels per side (126 for the paper's ResNet-18 at higher resolution)")
    episodes: str = choice("variable", "fixed")
