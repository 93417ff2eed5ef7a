"""Vectorised N-way K-shot episodes from an ImageStore, drawn on the training device.

A meta-batch of T tasks is a handful of tensor operations, with no Python loop over tasks or images:
random keys pick N distinct classes per task (among classes with at least K+Q images) and K+Q distinct
images within each class; the uint8 images are gathered, converted to float and normalised on the device.

A split whose images do not fit on the device (tieredImageNet's 9.5 GB meta-train split next to a model on a
small GPU) stays memory-mapped on the host: the rows are still chosen on the device, and only each batch's
images are gathered on the host and copied over (``dataset.store_on``).
"""

import torch

from metarun.data.store import ImageStore
from metarun.data.tasks import TaskBatch
from metarun.logging.console import note


class EpisodeSampler:
    """Draws classification episodes from one split's store."""

    def __init__(self, store: ImageStore, device: torch.device, mean, std, augment=None, split: str = "train",
                 store_on: str = "auto"):
        """Move ``store`` to ``device`` once (or keep it on the host, see ``images_on_device``); ``augment(x,
        generator)`` (optional) transforms every sampled batch.

        Args:
            mean, std: per-channel statistics of pixel values in [0, 1] (one value broadcasts to all channels).
            split: the split's name, used in error messages.
            store_on: "device", "host" or "auto" (``dataset.store_on``).
        """
        self.on_device = images_on_device(store, device, store_on, split)
        self.store = store.to(device) if self.on_device else ImageStore(store.images, store.offsets.to(device), store.class_names)
        self.device, self.augment, self.split = device, augment, split
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

    def too_small(self, per_class: int) -> int:
        """How many classes have fewer than ``per_class`` images (episodes never draw them)."""
        return len(self.counts) - len(self.eligible(per_class))

    def sample(self, num_tasks: int, ways: int, shots: int, queries: int, generator: torch.Generator) -> TaskBatch:
        """``num_tasks`` episodes of ``ways`` classes, with ``shots`` support and ``queries`` query images each.

        Labels are 0..ways-1 per task (or, with ``class_labels``, each class's index in the split), support and
        query sets are class-major and never share an image.
        """
        self.check(ways, shots, queries)
        per_class = shots + queries
        eligible = self.eligible(per_class)
        # the ``ways`` smallest of independent uniform keys: a uniformly random set of distinct classes
        picks = torch.rand(num_tasks, len(eligible), generator=generator, device=self.device).topk(ways, largest=False).indices
        classes = eligible[picks]  # [T, N]
        # likewise ``per_class`` distinct positions inside each class; keys past a class's end never win
        positions = torch.arange(self.max_count, device=self.device)
        keys = torch.rand(num_tasks, ways, self.max_count, generator=generator, device=self.device)
        keys = keys.masked_fill(positions >= self.counts[classes].unsqueeze(-1), 2.0)
        chosen = keys.topk(per_class, largest=False).indices  # [T, N, K+Q]
        rows = self.store.offsets[classes].unsqueeze(-1) + chosen  # [T, N, K+Q]
        labels = (classes if self.class_labels else torch.arange(ways, device=self.device).expand(num_tasks, ways))
        labels = labels.unsqueeze(-1).expand(num_tasks, ways, per_class)

        def part(start, stop):
            # support and query gathered apart come out contiguous, and normalising in place adds no buffer
            x = self.gather(rows[:, :, start:stop].flatten()).float().mul_(self.scale).sub_(self.shift)
            if self.augment is not None:
                x = self.augment(x, generator)
            return x.view(num_tasks, -1, *x.shape[1:]), labels[:, :, start:stop].reshape(num_tasks, -1)

        return TaskBatch(*part(0, shots), *part(shots, per_class))

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
