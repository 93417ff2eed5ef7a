"""ImageTasks: the classification task source shared by every image dataset (see ``metarun.data``)."""

import torch

from metarun.data.augment import random_crop_flip
from metarun.data.episodes import fixed_episodes
from metarun.data.sampler import EpisodeSampler
from metarun.data.tasks import TaskBatch


class ImageTasks:
    """N-way K-shot episodes from per-split image stores; evaluation episodes are fixed by (split, seed, index)."""

    objective = "classification"

    def __init__(self, stores: dict, ways: int, shots: int, queries: int, device: torch.device, normalisation, augment=None,
                 inverted: bool = False, store_on: str = "auto", within_alphabet: bool = False,
                 drawers_apart: bool = False):
        """One sampler per split ("train", "val", "test"), each store moved to ``device`` once.

        Args:
            normalisation: (mean, std) per channel of pixel values in [0, 1].
            augment: optional ``(x, generator) -> x`` applied to meta-training batches only.
            inverted: the stores hold the files' pixels inverted (Omniglot: ink = 1).
            store_on: where each split's images live: "device", "host" or "auto" (``dataset.store_on``).
            within_alphabet, drawers_apart: the episode structure of every split (see ``EpisodeSampler``).
        """
        mean, std = normalisation
        # saved in checkpoints, so load_learner preprocesses raw images alike
        self.normalisation, self.inverted = (list(mean), list(std)), inverted
        self.samplers = {
            split: EpisodeSampler(store, device, mean, std, augment if split == "train" else None, split, store_on,
                                  within_alphabet, drawers_apart)
            for split, store in stores.items()
        }
        self.ways, self.shots, self.queries = ways, shots, queries
        self.device = device
        self.input_shape = tuple(stores["train"].images.shape[1:])
        self.output_dim = ways
        # fail at start-up when meta-training's split is too small for its episodes; validation and meta-test
        # episodes have sizes of their own (eval.*), which ``metarun.components`` checks with check_episodes
        self.check_episodes("train")

    @classmethod
    def from_config(cls, cfg, stores: dict, device: torch.device, normalisation, inverted: bool = False,
                    augment=random_crop_flip) -> "ImageTasks":
        """The source with a dataset config's episode sizes and structure, ``store_on`` and, where its schema has
        the key and it is true, ``augment`` (the dataset's augmentation of meta-training images; random crop and
        flip unless given)."""
        augment = augment if cfg.get("augment") else None
        return cls(stores, cfg.ways, cfg.shots, cfg.queries, device, normalisation, augment, inverted, cfg.store_on,
                   cfg.within_alphabet, cfg.drawers_apart)

    def check_episodes(self, split: str, ways=None, shots=None, queries=None) -> None:
        """Fail now if ``split``'s episodes (``eval.*`` sizes; None = the dataset's) cannot be drawn, naming the
        key that set each size; warn about classes too small for them."""
        sizes = {"ways": ways, "shots": shots, "queries": queries}
        keys = tuple(f"eval.{name}" if value else f"dataset.{name}" for name, value in sizes.items())
        sampler = self.samplers[split]
        ways, shots, queries = (value or getattr(self, name) for name, value in sizes.items())
        sampler.check(ways, shots, queries, keys)
        warn_small_classes(sampler, shots + queries, f"{keys[1]}+{keys[2]}")
        if sampler.groups is not None:
            warn_small_alphabets(sampler, ways, shots + queries, keys[0])

    def label_by_class(self) -> None:
        """Label meta-training examples with their class's index among the train split's classes instead of 0..N-1
        per episode, for algorithms that train one classifier over every meta-train class (Baseline); the head
        then has one output per class."""
        self.samplers["train"].class_labels = True
        self.output_dim = len(self.samplers["train"].counts)

    def sample(self, num_tasks: int, generator: torch.Generator, shots=None, queries=None, ways=None) -> TaskBatch:
        """A meta-training batch of ``num_tasks`` episodes from the train split."""
        return self.samplers["train"].sample(num_tasks, ways or self.ways, shots or self.shots, queries or self.queries, generator)

    def episodes(self, split: str, seed: int, first: int, count: int, ways=None, shots=None, queries=None) -> TaskBatch:
        """Episodes ``first .. first+count-1`` of ``split``, each a pure function of (split, seed, index)."""
        sampler = self.samplers[split]
        sizes = (ways or self.ways, shots or self.shots, queries or self.queries)
        return fixed_episodes(lambda generator: sampler.sample(1, *sizes, generator), split, seed, first, count, self.device)


def warn_small_classes(sampler: EpisodeSampler, per_class: int, keys: str) -> None:
    """Say how many of the split's classes have too few images for ``per_class`` (set by ``keys``): no episode
    draws them, and a user who counted on them should know."""
    skipped = sampler.too_small(per_class)
    if skipped:
        print(f"warning: {skipped} of the {len(sampler.counts)} classes of the {sampler.split} split have fewer than "
              f"{per_class} images ({keys}) and are never drawn")


def warn_small_alphabets(sampler: EpisodeSampler, ways: int, per_class: int, key: str) -> None:
    """Name the split's alphabets with fewer than ``ways`` (set by ``key``) classes of ``per_class`` images: with
    ``within_alphabet`` no episode comes from them."""
    sizes = sampler.alphabet_sizes(per_class).tolist()
    small = [f"{name} ({size})" for name, size in zip(sampler.alphabets, sizes) if size < ways]
    if small:
        print(f"warning: {len(small)} of the {len(sizes)} alphabets of the {sampler.split} split have fewer than {ways} "
              f"classes ({key}) and are never drawn (dataset.within_alphabet): {', '.join(small)}")
