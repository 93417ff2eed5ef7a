"""Vectorised N-way K-shot episodes from an ImageStore, drawn on the training device.

A meta-batch of T tasks is a handful of tensor operations, with no Python loop over tasks or images:
random keys pick N distinct classes per task (among classes with at least K+Q images) and K+Q distinct
images within each class; the uint8 images are gathered, converted to float and normalised on the device.

Episodes can be structured further, with the same tensor operations. ``within_groups`` first draws a class
group per task (the first level of the class names: Omniglot's alphabets, an image tree's top folders) and masks
the keys of other groups' classes, as Lake et al. (2015) draw Omniglot's episodes within an alphabet;
``drawers_apart`` (Omniglot's) draws one set of drawers (image positions) per task, shared by its
classes, so that the support images come from other people than the query images.

A split whose images do not fit on the device (tieredImageNet's 9.5 GB meta-train split next to a model on a
small GPU) stays memory-mapped on the host: the rows are still chosen on the device, and only each batch's
images are gathered on the host and copied over (``dataset.store_on``).
"""

import torch

from metarun.data.files.store import ImageStore
from metarun.data.sampling.variable_episodes import Hierarchy
from metarun.data.tasks import TaskBatch
from metarun.logging.console import note


class EpisodeSampler:
    """Draws classification episodes from one split's store."""

    def __init__(self, store: ImageStore, device: torch.device, mean, std, augment=None, split: str = "train",
                 store_on: str = "auto", within_groups: bool = False, drawers_apart: bool = False, redraw=None):
        """Move ``store`` to ``device`` once (or keep it on the host, see ``images_on_device``); ``augment(x,
        generator)`` (optional) transforms every sampled batch.

        Args:
            mean, std: per-channel statistics of pixel values in [0, 1] (one value broadcasts to all channels).
            split: the split's name, used in error messages.
            store_on: "device", "host" or "auto" (``dataset.store_on``).
            within_groups: all classes of an episode share their group, the first level of their names
                (``<group>/<class>``, Omniglot's ``<alphabet>/<character>``; ``dataset.episodes_within=group``).
            drawers_apart: the i-th image of every class is drawer i's, and an episode's support and query
                images come from different drawers, the same ones for all its classes (``dataset.drawers_apart``).
            redraw: optional ``(pixels, rows, generator) -> pixels``, given each batch's float pixels (0-255) with
                their store rows before normalisation: Omniglot's re-drawing from pen strokes (``strokes.Redrawing``).
        """
        self.on_device = images_on_device(store, device, store_on, split)
        self.store = store.to(device) if self.on_device else ImageStore(store.images, store.offsets.to(device), store.class_names)
        self.device, self.augment, self.redraw, self.split = device, augment, redraw, split
        self.class_labels = False  # true: label each example with its class's index in the split (``label_by_class``)
        std = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
        mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        # (u8 / 255 - mean) / std as one multiply-add on the device
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        counts = store.counts
        self.counts = counts.to(device)
        self.max_count = int(counts.max()) if len(counts) else 0
        # eligible classes for each images-per-class need, found once (nonzero syncs with the device)
        self._eligible = {}
        self.group_names, self.groups = class_groups(store.class_names, split, device) if within_groups else ((), None)
        self._usable = {}  # groups with enough eligible classes, per (images per class, ways)
        self.drawers_apart = drawers_apart
        if drawers_apart and len(counts) and int(counts.min()) != self.max_count:
            raise ValueError(f"dataset.drawers_apart takes the i-th image of every class as drawer i's, but the classes "
                             f"of the {split} split hold {int(counts.min())} to {self.max_count} images; give every "
                             "class one image per drawer or set dataset.drawers_apart=false")

    def hierarchy(self):
        """The split's classes grouped by class group for variable episodes (a bilevel ``Hierarchy``), with
        ``within_groups``; else None."""
        return None if self.groups is None else Hierarchy.from_groups(self.groups)

    def eligible(self, per_class: int) -> torch.Tensor:
        """Indices of the classes with at least ``per_class`` images."""
        if per_class not in self._eligible:
            self._eligible[per_class] = torch.nonzero(self.counts >= per_class).flatten()
        return self._eligible[per_class]

    def check(self, ways: int, shots: int, queries: int, keys=("dataset.ways", "dataset.shots", "dataset.queries")) -> None:
        """Raise ValueError when the split cannot supply ``ways`` classes of ``shots + queries`` images.

        Args:
            keys: the config keys that set ways, shots and queries, named in the message.
        """
        ways_key, shots_key, queries_key = keys
        if shots + queries > self.max_count:
            raise ValueError(f"{shots_key}+{queries_key}={shots}+{queries} exceeds the {self.max_count} images of the "
                             f"largest class in the {self.split} split; lower them to at most {self.max_count} in total")
        available = len(self.eligible(shots + queries))
        if ways > available:
            raise ValueError(f"{ways_key}={ways} exceeds the {available} classes of the {self.split} split with at least "
                             f"{shots + queries} images; lower {ways_key} to at most {available}")
        if self.groups is not None and len(self.usable_groups(shots + queries, ways)) == 0:
            largest = int(self.group_sizes(shots + queries).max())
            raise ValueError(f"{ways_key}={ways} exceeds the {largest} classes (with at least {shots + queries} "
                             f"images) of the largest class group of the {self.split} split, and dataset.episodes_within=group "
                             f"draws an episode from one group; lower {ways_key} to at most {largest}")

    def too_small(self, per_class: int) -> int:
        """How many classes have fewer than ``per_class`` images (episodes never draw them)."""
        return len(self.counts) - len(self.eligible(per_class))

    def group_sizes(self, per_class: int) -> torch.Tensor:
        """How many classes with at least ``per_class`` images each group has (within_groups only)."""
        return torch.bincount(self.groups[self.eligible(per_class)], minlength=len(self.group_names))

    def usable_groups(self, per_class: int, ways: int) -> torch.Tensor:
        """Indices of the groups with at least ``ways`` classes of ``per_class`` images (within_groups only)."""
        if (per_class, ways) not in self._usable:
            self._usable[per_class, ways] = torch.nonzero(self.group_sizes(per_class) >= ways).flatten()
        return self._usable[per_class, ways]

    def sample(self, num_tasks: int, generator: torch.Generator, ways: int, shots: int, queries: int) -> TaskBatch:
        """``num_tasks`` episodes of ``ways`` classes, with ``shots`` support and ``queries`` query images each.

        Labels are 0..ways-1 per task (or, with ``class_labels``, each class's index in the split), support and
        query sets are class-major and never share an image.
        """
        self.check(ways, shots, queries)
        per_class = shots + queries
        classes = self.pick_classes(num_tasks, ways, per_class, generator)  # [T, N]
        rows = self.store.offsets[classes].unsqueeze(-1) + self.pick_positions(classes, per_class, generator)  # [T, N, K+Q]
        labels = (classes if self.class_labels else torch.arange(ways, device=self.device).expand(num_tasks, ways))
        labels = labels.unsqueeze(-1).expand(num_tasks, ways, per_class)
        support, query = (slice(0, shots), slice(shots, per_class))
        return self.batch(rows[:, :, support].reshape(num_tasks, -1), labels[:, :, support].reshape(num_tasks, -1),
                          rows[:, :, query].reshape(num_tasks, -1), labels[:, :, query].reshape(num_tasks, -1), generator)

    def batch(self, support_rows, support_labels, query_rows, query_labels, generator: torch.Generator,
              padded: bool = False) -> TaskBatch:
        """The TaskBatch of the images at ``support_rows`` and ``query_rows`` ([T, S] and [T, Q] rows of the
        store), normalised and (meta-training) augmented, with their labels; ``padded``: some labels are ``PAD``."""

        def part(rows, labels):
            # support and query gathered apart come out contiguous, and normalising in place adds no buffer
            x = self.gather(rows.flatten()).float()
            if self.redraw is not None:
                x = self.redraw(x, rows.flatten(), generator)
            x = x.mul_(self.scale).sub_(self.shift)
            if self.augment is not None:
                x = self.augment(x, generator)
            return x.view(*rows.shape, *x.shape[1:]), labels

        return TaskBatch(*part(support_rows, support_labels), *part(query_rows, query_labels), padded=padded)

    def pick_classes(self, num_tasks: int, ways: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
        """[T, N] distinct classes per task with at least ``per_class`` images, all of one group with
        ``within_groups``."""
        eligible = self.eligible(per_class)
        # the ``ways`` smallest of independent uniform keys: a uniformly random set of distinct classes
        keys = torch.rand(num_tasks, len(eligible), generator=generator, device=self.device)
        if self.groups is not None:
            # a group per task, uniformly among those that can fill the episode; other groups' keys never win
            usable = self.usable_groups(per_class, ways)
            group = usable[torch.randint(len(usable), (num_tasks, 1), generator=generator, device=self.device)]
            keys = keys.masked_fill(self.groups[eligible] != group, 2.0)
        return eligible[keys.topk(ways, largest=False).indices]

    def pick_positions(self, classes: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
        """[T, N, K+Q] distinct image positions inside each of ``classes``, the first K for the support set."""
        num_tasks, ways = classes.shape
        if self.drawers_apart:
            # one draw of drawers per task for all its classes, so support and query drawers never meet (Lake et al.)
            keys = torch.rand(num_tasks, 1, self.max_count, generator=generator, device=self.device)
            return keys.topk(per_class, largest=False).indices.expand(num_tasks, ways, per_class)
        # the ``per_class`` smallest keys: distinct positions inside each class; keys past a class's end never win
        positions = torch.arange(self.max_count, device=self.device)
        keys = torch.rand(num_tasks, ways, self.max_count, generator=generator, device=self.device)
        keys = keys.masked_fill(positions >= self.counts[classes].unsqueeze(-1), 2.0)
        return keys.topk(per_class, largest=False).indices

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``rows`` (on the device), on the device."""
        if self.on_device:
            return self.store.images[rows]
        return self.store.images[rows.cpu()].to(self.device, non_blocking=True)


def images_on_device(store: ImageStore, device: torch.device, store_on: str, split: str) -> bool:
    """Whether ``store``'s images go to ``device`` whole: "device" and "host" say so; "auto" does when they take at
    most half of the device's free memory (always on a CPU, where host and device are one), and says so when not."""
    if store_on not in ("auto", "device", "host"):
        raise ValueError(f"dataset.store_on={store_on} is not one of auto, device, host")
    if store_on != "auto" or device.type != "cuda":
        return store_on != "host"
    free, _ = torch.cuda.mem_get_info(device)
    needed = store.images.numel()
    if needed <= free / 2:
        return True
    note(f"the {split} split's images ({needed / 2**30:.1f} GiB) exceed half of {device}'s free memory "
         f"({free / 2**30:.1f} GiB): they stay memory-mapped on the host and each batch's images are copied over "
         "(dataset.store_on=device to force them onto the device)")
    return False


def class_groups(class_names: tuple, split: str, device: torch.device) -> tuple:
    """(group names, int64 [num_classes] index of each class's group): the first level of names such as
    ``<alphabet>/<character>`` or ``<alphabet>/<character>/rot090``."""
    flat = next((name for name in class_names if "/" not in name), None)
    if flat is not None:
        raise ValueError(f"dataset.episodes_within=group draws each episode from one class group, but class {flat} of the "
                         f"{split} split has none (class names need a <group>/<class> level); nest its class folders "
                         "in group folders or set dataset.episodes_within=split")
    names = [group(name) for name in class_names]
    groups = tuple(dict.fromkeys(names))
    index = {name: i for i, name in enumerate(groups)}
    return groups, torch.tensor([index[name] for name in names], dtype=torch.int64, device=device)


def group(class_name: str) -> str:
    """The group of a class name ``<group>/<class>...`` (Omniglot's alphabet in ``<Alphabet>/<character>``)."""
    return class_name.split("/", 1)[0]
