"""Meta-Dataset (Triantafillou et al., 2020, "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few
Examples", ICLR): ten sources, episodes of 5-50 ways with imbalanced shots, training on several sources at once.

Files: the official conversion's output under ``dataset.root``, one folder per source (``ilsvrc_2012``,
``omniglot``, ``aircraft``, ``cu_birds``, ``dtd``, ``quickdraw``, ``fungi``, ``vgg_flower``, ``traffic_sign``,
``mscoco``) with its ``dataset_spec.json`` and one ``<class id>.tfrecords`` per class, read without TensorFlow
(``metarun.data.files.tfrecord``, ``metarun.data.files.metadataset_files``); each split of a source is decoded once into an
``ImageStore`` cache. Images are RGB at ``dataset.image_size`` (84 or 126), scaled to [-1, 1] as the official
pipeline does.

Protocol (``dataset.episodes=variable``, the default): every meta-training episode comes from one of
``dataset.sources``, drawn uniformly per episode, with Meta-Dataset's sampler (``metarun.data.sampling.variable_episodes``)
and the source's class hierarchy (ILSVRC's WordNet DAG, Omniglot's alphabets). Validation scores each training
source's validation split; the meta-test scores each of ``eval.sources`` (null: every source in ``dataset.root``
that has test classes) on its own fixed episodes (``eval.episodes`` each, 600 in the paper), reported per source
with the average over sources. ``dataset.episodes=fixed`` draws ``dataset.ways``-way ``dataset.shots``-shot
episodes from the same sources instead.
"""

from pathlib import Path

import torch

from metarun.config.datasets import MetaDatasetConfig
from metarun.data import Dataset
from metarun.data.files.metadataset_files import SOURCES, read_spec, source_store
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.data.source import TaskSource
from metarun.data.tasks import TaskBatch

NORMALISATION = ([0.5] * 3, [0.5] * 3)  # pixels in [0, 1] to [-1, 1], as the official decoder maps them


def build(settings, device: torch.device) -> "MetaDatasetTasks":
    """The Meta-Dataset task source of a ``MetaDatasetConfig``: every split it trains, validates and tests on."""
    root = Path(settings.root)
    unknown = [name for name in settings.sources if name not in SOURCES]
    if unknown or not settings.sources:
        named = f"names {', '.join(unknown)}" if unknown else "is empty"
        raise ValueError(f"dataset.sources={list(settings.sources)} {named}; list some of {', '.join(SOURCES)}")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset.root={root} does not exist; point it at the folder holding one folder per "
                                "Meta-Dataset source (the official conversion's records root)")
    tested = tuple(name for name in SOURCES if (root / name).is_dir())
    per_source = {}
    for name in dict.fromkeys([*settings.sources, *tested]):
        splits = (("train", "val") if name in settings.sources else ()) + (("test",) if name in tested else ())
        per_source[name] = source_tasks(settings, root / name, splits, device)
    return MetaDatasetTasks(per_source, tuple(settings.sources), device)


def source_tasks(settings, folder: Path, splits: tuple, device: torch.device) -> ImageTasks:
    """The episodes of one source's ``splits``, with its class hierarchy, from its cached stores."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Meta-Dataset source {folder.name} is not in {folder.parent}: expected {folder}/ with "
                                "dataset_spec.json and its .tfrecords; convert it with the official scripts, or leave "
                                "it out of dataset.sources")
    spec = read_spec(folder, splits)
    stores = {split: source_store(folder, spec, split, settings.image_size, Path(settings.cache_dir))
              for split in splits}
    variable = settings.variable if settings.episodes == "variable" else None
    return ImageTasks(stores, settings.ways, settings.shots, settings.queries, device, NORMALISATION,
                      store_on=settings.store_on, variable=variable, hierarchies=spec.hierarchy, what=folder.name)


class MetaDatasetTasks(TaskSource):
    """Episodes of several sources: meta-training draws each episode's source uniformly among the training ones;
    evaluation scores each source on its own fixed episodes (splits ``val/<source>``, ``test/<source>``)."""

    objective = "classification"
    normalisation, inverted = NORMALISATION, False

    def __init__(self, per_source: dict, training: tuple, device: torch.device):
        """``per_source``: {source: its ``ImageTasks``}; ``training``: the sources meta-training draws from."""
        self.per_source, self.training, self.device = per_source, training, device
        first = per_source[training[0]]
        self.input_shape, self.output_dim, self.variable = first.input_shape, first.output_dim, first.variable
        self.ways, self.shots, self.queries = first.ways, first.shots, first.queries

    def scored_splits(self, split: str, sources=None) -> tuple:
        """The splits an evaluation of ``split`` scores apart and averages: one per source, the training sources'
        for validation and ``sources`` (``eval.sources``; null: every source with test classes) for the meta-test."""
        tested = [name for name, tasks in self.per_source.items() if "test" in tasks.samplers]
        names = self.training if split == "val" else tuple(sources or tested)
        missing = [name for name in names if split == "test" and name not in tested]
        if missing:
            raise ValueError(f"eval.sources={list(names)} names {', '.join(missing)}, which dataset.root has no test "
                             f"classes of; list some of {', '.join(tested)}")
        return tuple(f"{split}/{name}" for name in names)

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Fail now if the episodes of ``split`` (``test/<source>``) cannot be drawn (see ``ImageTasks``)."""
        source, part = self.locate(split)
        source.check_episodes(part, ways, shots, queries)

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """``num_tasks`` meta-training episodes, each from a training source drawn uniformly."""
        picks = torch.randint(len(self.training), (num_tasks,), generator=generator, device=self.device).tolist()
        batches = [self.per_source[self.training[i]].sample(picks.count(i), generator, shots, queries, ways)
                   for i in sorted(set(picks))]
        return TaskBatch.cat(batches)

    def episodes(self, split: str, seed: int, first: int, count: int, ways=None, shots=None, queries=None) -> TaskBatch:
        """Episodes ``first .. first+count-1`` of ``split`` (``test/<source>``), each a pure function of (split,
        seed, index)."""
        source, part = self.locate(split)
        return source.fixed(split, part, seed, first, count, (ways, shots, queries))

    def locate(self, split: str) -> tuple:
        """(the source's ``ImageTasks``, its split) of ``<split>/<source>``."""
        part, _, name = split.partition("/")
        return self.per_source[name], part


DATASET = Dataset(build, MetaDatasetConfig)
