"""ImageTasks: the classification task source shared by every image dataset (see ``metarun.data``)."""

from typing import Optional

import torch

from metarun.data.sampling.augment import random_crop_flip
from metarun.data.sampling.episodes import fixed_episodes
from metarun.data.sampling.sampler import EpisodeSampler
from metarun.data.sampling.variable_episodes import VariableEpisodes
from metarun.data.source import TaskSource
from metarun.data.tasks import TaskBatch


class ImageTasks(TaskSource):
    """N-way K-shot episodes from per-split image stores; evaluation episodes are fixed by (split, seed, index)."""

    objective = "classification"

    def __init__(self, stores: dict, ways: int, shots: int, queries: int, device: torch.device, normalisation, augment=None,
                 inverted: bool = False, store_on: str = "auto", within_groups: bool = False,
                 drawers_apart: bool = False, variable=None, hierarchies=None, what: str = "the dataset", redraw=None):
        """One sampler per split ("train", "val", "test"), each store moved to ``device`` once.

        Args:
            normalisation: (mean, std) per channel of pixel values in [0, 1].
            augment: optional ``(x, generator) -> x`` applied to meta-training batches only.
            inverted: the stores hold the files' pixels inverted (Omniglot: ink = 1).
            store_on: where each split's images live: "device", "host" or "auto" (``dataset.store_on``).
            within_groups, drawers_apart: the episode structure of every split (see ``EpisodeSampler``).
            variable: Meta-Dataset's variable episodes with these settings (a ``VariableEpisodesConfig``; None:
                fixed N-way K-shot episodes); with ``within_groups``, each from one class group.
            hierarchies: {split: the ``Hierarchy`` variable episodes draw their classes within, or None}; by
                default the class groups of ``within_groups``.
            what: the dataset as messages name it (a Meta-Dataset source).
            redraw: optional ``(pixels, rows, generator) -> pixels`` re-drawing meta-training images before
                ``augment`` (Omniglot's pen strokes, ``strokes.Redrawing``).
        """
        mean, std = normalisation
        # saved in checkpoints, so load_learner preprocesses raw images alike
        self.normalisation, self.inverted = (list(mean), list(std)), inverted
        self.augment = augment  # also distorts the support copies of evaluation episodes (``eval.support_copies``)
        self.samplers = {
            split: EpisodeSampler(store, device, mean, std, augment if split == "train" else None, split, store_on,
                                  within_groups, drawers_apart, redraw if split == "train" else None)
            for split, store in stores.items()
        }
        self.ways, self.shots, self.queries = ways, shots, queries
        self.device = device
        self.input_shape = tuple(next(iter(stores.values())).images.shape[1:])
        self.output_dim = ways
        self.variable = variable is not None  # episodes of variable ways and shots, padded (``metarun.mapping.ragged``)
        if self.variable:
            if drawers_apart:
                raise ValueError("dataset.drawers_apart draws fixed episodes of one drawer set per task; set "
                                 "dataset.episodes=fixed with it, or dataset.drawers_apart=false")
            hierarchies = hierarchies or {split: sampler.hierarchy() for split, sampler in self.samplers.items()}
            self.plans = {split: VariableEpisodes(store.counts, store.offsets, hierarchies.get(split), variable, device,
                                                  f"the {split} split of {what}", "dataset.variable")
                          for split, store in stores.items()}
            self.output_dim = variable.max_ways  # a fixed head has an output for the largest episode's classes
        self.uncapturable = uncapturable(self.samplers.get("train"), self.variable)
        # fail at start-up when meta-training's split is too small for its episodes; validation and meta-test
        # episodes have sizes of their own (eval.*), which ``metarun.runner.components`` checks with check_episodes
        if "train" in stores:
            self.check_episodes("train")

    @classmethod
    def from_config(cls, settings, stores: dict, device: torch.device, normalisation, inverted: bool = False,
                    augment=random_crop_flip, redraw=None) -> "ImageTasks":
        """The source with a dataset config's episode sizes and structure, ``store_on`` and, where its schema has
        the key and it is true, ``drawers_apart`` (Omniglot's) and ``augment`` (the dataset's augmentation of
        meta-training images; random crop and flip unless given), and ``redraw`` (see ``__init__``)."""
        augment = augment if settings.get("augment") else None
        variable = settings.variable if settings.episodes == "variable" else None
        return cls(stores, settings.ways, settings.shots, settings.queries, device, normalisation, augment, inverted,
                   settings.store_on, settings.episodes_within == "group", settings.get("drawers_apart", False),
                   variable, redraw=redraw)

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Fail now if ``split``'s episodes (``eval.*`` sizes; None = the dataset's) cannot be drawn, naming the
        key that set each size; warn about classes too small for them."""
        sizes = {"ways": ways, "shots": shots, "queries": queries}
        keys = tuple(f"eval.{name}" if value else f"dataset.{name}" for name, value in sizes.items())
        sampler = self.samplers[split]
        if self.variable:
            given = [f"eval.{name}={value}" for name, value in sizes.items() if value]
            if given:
                raise ValueError(f"{', '.join(given)} sets the size of fixed episodes, but dataset.episodes=variable "
                                 "draws each episode's own (dataset.variable.*); set it to null")
            self.plans[split].check()
            return
        ways, shots, queries = (value or getattr(self, name) for name, value in sizes.items())
        sampler.check(ways, shots, queries, keys)
        warn_small_classes(sampler, shots + queries, f"{keys[1]}+{keys[2]}")
        if sampler.groups is not None:
            warn_small_groups(sampler, ways, shots + queries, keys[0])

    def label_by_class(self) -> bool:
        """Label meta-training examples with their class's index among the train split's classes instead of 0..N-1
        per episode, for algorithms that train one classifier over every meta-train class (Baseline); the head
        then has one output per class. True: it can."""
        if self.variable:
            raise ValueError("this algorithm trains one classifier over every meta-train class on fixed batches, not on "
                             "variable episodes; set dataset.episodes=fixed")
        self.samplers["train"].class_labels = True
        self.output_dim = len(self.samplers["train"].counts)
        return True

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """A meta-training batch of ``num_tasks`` episodes from the train split."""
        return self.draw("train", num_tasks, generator, (ways or self.ways, shots or self.shots, queries or self.queries))

    def episodes(self, split: str, seed: int, first: int, count: int, ways=None, shots=None, queries=None,
                 support_copies: int = 0) -> TaskBatch:
        """Episodes ``first .. first+count-1`` of ``split``, each a pure function of (split, seed, index);
        ``support_copies``: see ``with_support_copies``."""
        return self.fixed(split, split, seed, first, count, (ways, shots, queries), support_copies)

    def fixed(self, name: str, split: str, seed: int, first: int, count: int, sizes: tuple,
              support_copies: int = 0) -> TaskBatch:
        """``episodes`` of ``split`` seeded by ``name``, the split as evaluation names it (``test/aircraft``);
        ``sizes`` are (ways, shots, queries), None for the dataset's."""
        sizes = tuple(size or own for size, own in zip(sizes, (self.ways, self.shots, self.queries)))

        def draw(generator: torch.Generator) -> TaskBatch:
            batch = self.draw(split, 1, generator, sizes)
            return with_support_copies(batch, support_copies, self.augment, generator) if support_copies else batch

        return fixed_episodes(draw, name, seed, first, count, self.device)

    def draw(self, split: str, num_tasks: int, generator: torch.Generator, sizes: tuple) -> TaskBatch:
        """``num_tasks`` episodes of ``split``: variable ones, or of ``sizes`` (ways, shots, queries)."""
        if self.variable:
            return self.samplers[split].batch(*self.plans[split].draw(num_tasks, generator), generator, padded=True)
        return self.samplers[split].sample(num_tasks, generator, *sizes)


def with_support_copies(batch: TaskBatch, copies: int, augment, generator: torch.Generator) -> TaskBatch:
    """``batch`` with each support image followed by ``copies`` random distortions of itself by ``augment`` (the
    training augmentation), labelled alike: test-time augmentation of the support set. A class's shots stay
    together (class-major), so ProtoNet's prototype becomes the mean embedding of the image and its distortions,
    and MAML adapts on them all. ``generator`` is the episode's own, so the copies are part of the fixed episode."""
    x, y = batch.support_x, batch.support_y
    tasks, size, shape = *y.shape[:2], x.shape[2:]
    distorted = augment(x.unsqueeze(2).expand(tasks, size, copies, *shape).reshape(-1, *shape), generator)
    x = torch.cat([x.unsqueeze(2), distorted.view(tasks, size, copies, *shape)], 2).flatten(1, 2)
    y = y.unsqueeze(2).expand(tasks, size, copies + 1, *y.shape[2:]).flatten(1, 2)
    return TaskBatch(x, y, batch.query_x, batch.query_y, padded=batch.padded)


def warn_small_classes(sampler: EpisodeSampler, per_class: int, keys: str) -> None:
    """Say how many of the split's classes have too few images for ``per_class`` (set by ``keys``): no episode
    draws them, and a user who counted on them should know."""
    skipped = sampler.too_small(per_class)
    if skipped:
        print(f"warning: {skipped} of the {len(sampler.counts)} classes of the {sampler.split} split have fewer than "
              f"{per_class} images ({keys}) and are never drawn")


def warn_small_groups(sampler: EpisodeSampler, ways: int, per_class: int, key: str) -> None:
    """Name the split's class groups with fewer than ``ways`` (set by ``key``) classes of ``per_class`` images: with
    ``within_groups`` no episode comes from them."""
    sizes = sampler.group_sizes(per_class).tolist()
    small = [f"{name} ({size})" for name, size in zip(sampler.group_names, sizes) if size < ways]
    if small:
        print(f"warning: {len(small)} of the {len(sizes)} class groups of the {sampler.split} split have fewer than {ways} "
              f"classes ({key}) and are never drawn (dataset.episodes_within=group): {', '.join(small)}")


def uncapturable(train: Optional[EpisodeSampler], variable: bool) -> Optional[str]:
    """Why drawing meta-training episodes cannot be captured in a CUDA graph (a draw whose sizes or memory change,
    or that reads back to the host), naming the key; None where it can."""
    if variable:
        return "dataset.episodes=variable draws episodes of different sizes"
    if train is not None and train.redraw is not None:
        return "dataset.strokes.files re-draws images with reads back to the host"
    if train is not None and not train.on_device:
        return "the training images stay on the host (dataset.store_on); set dataset.store_on=device"
    return None
