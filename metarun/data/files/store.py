"""ImageStore: a split as one uint8 tensor [N, C, H, W] plus per-class index ranges, cached on disk.

Every image dataset converts its files into this one form once, cached in a ``.store`` file (a small header,
then the raw uint8 pixels, memory-mapped when loaded) whose name carries a fingerprint of the sources; the
sampler draws episodes from it with tensor indexing on the training device.
"""

import hashlib
import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from metarun.logging.console import note
from metarun.utils.atomic import atomic_path
from metarun.utils.errors import RunError


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

    def where(self, keep) -> "ImageStore":
        """A store of the classes whose name satisfies ``keep(name)``, in their order."""
        return self.select([i for i, name in enumerate(self.class_names) if keep(name)])

    @staticmethod
    def cat(stores: list) -> "ImageStore":
        """One store holding the classes of ``stores`` one after another (same image shape)."""
        offsets = [torch.zeros(1, dtype=torch.long)]
        for store in stores:
            offsets.append(store.offsets[1:] + offsets[-1][-1])
        return ImageStore(torch.cat([s.images for s in stores]), torch.cat(offsets), sum((s.class_names for s in stores), ()))

    def save(self, path: Path) -> None:
        """Write the store as a cache file (see ``write_store``)."""

        def fill(images: torch.Tensor, written: Callable) -> None:
            for start in range(0, len(images), CHUNK_ROWS):
                images[start:start + CHUNK_ROWS] = self.images[start:start + CHUNK_ROWS]
                written(start + CHUNK_ROWS)

        write_store(path, self.class_names, self.counts.tolist(), tuple(self.images.shape[1:]), fill)

    @staticmethod
    def load(path: Path) -> "ImageStore":
        """Memory-map a cache file: pages are read from disk when a batch first touches them, so a split larger
        than RAM still loads; an unreadable or truncated file is an error naming the file to delete."""
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise ValueError("not a metarun store")
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length))
            shape, start = tuple(header["shape"]), _data_offset(length)
            if Path(path).stat().st_size != start + math.prod(shape):
                raise ValueError(f"{Path(path).stat().st_size} bytes instead of {start + math.prod(shape)}")
            # copy-on-write: the tensor is writable (torch wants that) while the file stays as built
            pixels = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=shape)
            return ImageStore(torch.from_numpy(pixels), torch.tensor(header["offsets"]), tuple(header["class_names"]))
        except Exception as err:  # any failure to read the cache means the same fix
            raise RunError(f"cannot read the dataset cache {path} ({err.__class__.__name__}: {err}); delete it and rerun "
                           "to rebuild it") from err


# a cache file: MAGIC, the JSON header's length (8 bytes, little-endian), the header (shape, offsets, class names),
# zeros up to the next page, then the uint8 images [N, C, H, W] row after row: memory-mappable as they are
MAGIC = b"metarun-store-v1"
PAGE = 4096
CHUNK_ROWS = 4096  # rows copied at a time when a whole store is saved


def _encode_header(class_names: tuple, counts: list, image_shape: tuple) -> dict:
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + int(count))
    return {"shape": [offsets[-1], *image_shape], "offsets": offsets, "class_names": list(class_names)}


def _data_offset(header_length: int) -> int:
    """Where the pixels start after a header of ``header_length`` bytes: the next page."""
    used = len(MAGIC) + 8 + header_length
    return -(-used // PAGE) * PAGE


def write_store(path: Path, class_names: tuple, counts: list, image_shape: tuple, fill: Callable) -> None:
    """Write a cache file of ``sum(counts)`` images of ``image_shape``, class after class, atomically.

    ``fill(images, written)`` receives the file's uint8 tensor [N, *image_shape] (memory-mapped) and must write
    every row, class-major in ``class_names`` order; calling ``written(rows)`` once the first ``rows`` rows are
    final lets their pages go from the process's memory (they stay in the file), so that building a cache larger
    than RAM keeps the process's memory flat. The file's space is reserved before ``fill`` runs, so a full disk
    fails at once as an OSError instead of killing the process in the middle of a write; on any failure nothing is
    left at ``path``.
    """
    header = _encode_header(class_names, counts, image_shape)
    shape, encoded = tuple(header["shape"]), json.dumps(header).encode()
    start = _data_offset(len(encoded))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + len(encoded).to_bytes(8, "little") + encoded)
            os.posix_fallocate(f.fileno(), 0, start + math.prod(shape))
        if math.prod(shape):
            with open(tmp, "r+b") as f:
                mapped = mmap.mmap(f.fileno(), 0)
            pixels = np.frombuffer(mapped, dtype=np.uint8, count=math.prod(shape), offset=start).reshape(shape)
            fill(torch.from_numpy(pixels), _releaser(mapped, start, math.prod(shape[1:])))
            mapped.flush()
            # the map closes when the last array over it goes (a failed fill's traceback may still hold one)
            del pixels


def _releaser(mapped: mmap.mmap, start: int, row_bytes: int) -> Callable:
    """``written(rows)`` for ``write_store``: writes the whole pages of the first ``rows`` rows not yet released
    back to the file and takes them out of the process's memory (later reads fault them in from the file)."""
    released = [start - start % PAGE]

    def written(rows: int) -> None:
        end = min(start + rows * row_bytes, len(mapped)) // PAGE * PAGE
        if end > released[0]:
            mapped.flush(released[0], end - released[0])
            mapped.madvise(mmap.MADV_DONTNEED, released[0], end - released[0])
            released[0] = end

    return written


def cached_store(path: Path, build) -> ImageStore:
    """The store cached at ``path``, or ``build()``'s store, saved there first; the cache is never half-written."""
    if path.exists():
        return ImageStore.load(path)
    # with the progress on stderr, so that a script's stdout stays its own (scripts/bench_data.py prints JSON)
    note(f"building the dataset cache {path} (once: later runs memory-map it)")
    store = build()
    _writing(path, lambda: store.save(path))
    return store


def cached_store_by_chunks(path: Path, plan: Callable) -> ImageStore:
    """The store cached at ``path``, or one built straight into that file with memory bounded by the rows its
    ``fill`` holds at a time: for splits too large to decode in RAM (tieredImageNet).

    ``plan()`` gives ``(class_names, counts, image_shape, fill)`` for ``write_store``; it runs only when the cache
    is built, so a cached run reads no source file (an index of a large split is dear to read).
    """
    if not path.exists():
        note(f"building the dataset cache {path} (once: later runs memory-map it)")
        class_names, counts, image_shape, fill = plan()
        _writing(path, lambda: write_store(path, class_names, counts, image_shape, fill))
    return ImageStore.load(path)


def _writing(path: Path, write) -> None:
    try:
        write()
    except OSError as err:
        raise RunError(f"cannot write the dataset cache {path} ({err.strerror or err}); free space there or set "
                       "dataset.cache_dir to a writable folder with room") from err


def fingerprint(*paths: Path) -> str:
    """A short hash of files' or folders' paths, sizes and modification times: it changes when the data does, so
    a replaced file gets a new cache instead of its stale one."""
    stats = []
    for path in (Path(p).resolve() for p in paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stats.append((str(path), [(p.relative_to(path).as_posix() if path.is_dir() else p.name, p.stat().st_size,
                                   p.stat().st_mtime_ns) for p in files]))
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
