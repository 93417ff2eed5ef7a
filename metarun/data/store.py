"""ImageStore: a split as one uint8 tensor [N, C, H, W] plus per-class index ranges, cached on disk.

Every image dataset (Omniglot, miniImageNet, image folders) converts its files into this one form once;
the sampler draws episodes from it with tensor indexing on the training device.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from metarun.atomic import atomic_path
from metarun.errors import RunError
from metarun.logging.console import note


@dataclass(frozen=True)
class ImageStore:
    """Images of one split grouped by class.

    Attributes:
        images: uint8 [N, C, H, W]; class c owns rows ``offsets[c] : offsets[c + 1]``.
        offsets: int64 [num_classes + 1], starting at 0 and ending at N.
        class_names: one name per class (e.g. "Greek/character05/rot090").
    """

    images: torch.Tensor
    offsets: torch.Tensor
    class_names: tuple

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageStore.images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.class_names) + 1 != len(self.offsets) or int(self.offsets[-1]) != len(self.images):
            raise ValueError("ImageStore.offsets must have one entry per class plus one, ending at the number of images")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def counts(self) -> torch.Tensor:
        """Images per class, int64 [num_classes]."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device) -> "ImageStore":
        """The same store with its tensors on ``device``."""
        return ImageStore(self.images.to(device), self.offsets.to(device), self.class_names)

    def select(self, classes: list) -> "ImageStore":
        """A store of the classes at indices ``classes``, in that order."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        counts = self.counts[classes]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        # row i of the result is row i of its class's run in the source, shifted to that run's start
        rows = torch.arange(int(offsets[-1])) + torch.repeat_interleave(self.offsets[classes] - offsets[:-1], counts)
        return ImageStore(self.images[rows], offsets, tuple(self.class_names[c] for c in classes.tolist()))

    @staticmethod
    def cat(stores: list) -> "ImageStore":
        """One store holding the classes of ``stores`` one after another (same image shape)."""
        offsets = [torch.zeros(1, dtype=torch.long)]
        for store in stores:
            offsets.append(store.offsets[1:] + offsets[-1][-1])
        return ImageStore(torch.cat([s.images for s in stores]), torch.cat(offsets), sum((s.class_names for s in stores), ()))

    def save(self, path: Path) -> None:
        """Write the store atomically (temporary file, then rename), so an interrupted write leaves nothing."""
        with atomic_path(path) as tmp:
            torch.save({"images": self.images.contiguous(), "offsets": self.offsets, "class_names": list(self.class_names)}, tmp)

    @staticmethod
    def load(path: Path) -> "ImageStore":
        """Memory-map a store written by ``save``; an unreadable file is an error naming the file to delete."""
        try:
            state = torch.load(path, mmap=True, weights_only=True)
            return ImageStore(state["images"], state["offsets"], tuple(state["class_names"]))
        except Exception as err:  # any failure to read the cache means the same fix
            raise RunError(f"cannot read the dataset cache {path} ({err.__class__.__name__}); delete it and rerun to rebuild it") from err


def cached_store(path: Path, build) -> ImageStore:
    """The store cached at ``path``, or ``build()``'s store, saved there first; the cache is never half-written."""
    if path.exists():
        return ImageStore.load(path)
    # with the progress on stderr, so that a script's stdout stays its own (scripts/bench_data.py prints JSON)
    note(f"building the dataset cache {path} (once: later runs memory-map it)")
    store = build()
    try:
        store.save(path)
    except OSError as err:
        raise RunError(f"cannot write the dataset cache {path} ({err.strerror}); set dataset.cache_dir to a writable folder") from err
    return store


def fingerprint(path: Path) -> str:
    """A short hash of a file's or folder's path, sizes and modification times: it changes when the data does."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(p.relative_to(path).as_posix() if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr((str(path), stats)).encode()).hexdigest()[:16]
