"""Episodes per second: metarun's on-device sampler against a conventional per-sample pipeline.

    python scripts/bench_data.py [--quick] [--device cpu|cuda] [--threads N]

Both pipelines run on the same machine in the same process, on the same images:
  * metarun: files converted once into an ``ImageStore``; ``EpisodeSampler`` draws a whole meta-batch
    with tensor indexing and normalises it on the device.
  * conventional: a ``torch.utils.data.Dataset`` that opens each image file with PIL and transforms it per
    sample (resize with antialiasing, to tensor, normalise), a batch sampler yielding one episode per batch,
    ``DataLoader(num_workers=2)``, and the episodes stacked into a meta-batch in the main process.
Workloads (the issue's): Omniglot 20-way 5-shot 15-query, meta-batch 32, on the real subset
``images_background_small1.zip`` (from ``$METARUN_SHARED/data/omniglot`` or ``<repo>/../shared/data/omniglot``;
the conventional pipeline reads its PNGs extracted to a temporary folder), and miniImageNet 5-way 5-shot
15-query, meta-batch 4, on a synthetic folder of 84x84 JPEGs with Ravi & Larochelle's csv layout.
Prints one JSON line per measurement, then one summary line per dataset with the speed-up; on Omniglot, one more
line compares Meta-Dataset's variable-way sampler with the fixed-way one on 5-way 1-shot episodes (the target:
at most 2x its cost).
``--quick`` runs tiny budgets and meta-batches of 2 (a smoke test, not a measurement).
"""

import argparse
import json
import os
import random
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from metarun.config.datasets import VariableEpisodesConfig
from metarun.data.files.imagefiles import image_to_array, read_images
from metarun.data.miniimagenet import load_split
from metarun.data.sampling.sampler import EpisodeSampler
from metarun.data.sampling.variable_episodes import VariableEpisodes
from metarun.utils.allocator import use_huge_pages

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ZIP = "data/omniglot/images_background_small1.zip"
# meta-batches timed (metarun, conventional) per dataset; the conventional budgets are ~200 episodes, so
# the few episodes its workers prefetch during the warm-up barely count
BUDGETS = {"omniglot": (50, 6), "miniimagenet": (50, 50)}
QUICK_BUDGET, QUICK_META_BATCH = (2, 1), 2


class ImageFiles(Dataset):
    """The conventional dataset: one image file decoded and transformed per ``__getitem__``."""

    def __init__(self, paths: list, labels: list, size: int, channels: int, mean, std):
        """Image ``paths`` grouped by class, with their class ``labels``."""
        self.paths, self.labels, self.size, self.channels = paths, labels, size, channels
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            pixels = torch.tensor(image_to_array(image, self.size, self.channels))
        return (pixels.float() / 255 - self.mean) / self.std, self.labels[index]


class EpisodeBatches(Sampler):
    """Yields the dataset indices of one N-way (K+Q)-image episode per batch."""

    def __init__(self, offsets: list, ways: int, per_class: int, episodes: int, seed: int = 0):
        """``offsets``: start of each class in the dataset, plus its length."""
        self.offsets, self.ways, self.per_class, self.episodes, self.seed = offsets, ways, per_class, episodes, seed

    def __len__(self) -> int:
        return self.episodes

    def __iter__(self):
        rng = random.Random(self.seed)
        starts, ends = self.offsets[:-1], self.offsets[1:]
        for _ in range(self.episodes):
            classes = rng.sample(range(len(starts)), self.ways)
            yield [i for c in classes for i in rng.sample(range(starts[c], ends[c]), self.per_class)]


def time_metarun(store, device, mean, std, task, meta_batches: int) -> float:
    """Seconds for ``meta_batches`` meta-batches from ``EpisodeSampler``, after one warm-up."""
    sampler = EpisodeSampler(store, device, mean, std)
    generator = torch.Generator(device=device).manual_seed(0)
    num_tasks, *sizes = task
    sampler.sample(num_tasks, generator, *sizes)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(meta_batches):
        batch = sampler.sample(num_tasks, generator, *sizes)
    synchronize(device)
    assert batch.query_x.isfinite().all()
    return time.perf_counter() - start


def time_conventional(dataset, offsets, device, task, meta_batches: int) -> float:
    """Seconds for ``meta_batches`` meta-batches through ``DataLoader(num_workers=2)``, after one warm-up."""
    tasks, ways, shots, queries = task
    episodes = EpisodeBatches(offsets, ways, shots + queries, tasks * (meta_batches + 1))
    batches = iter(DataLoader(dataset, batch_sampler=episodes, num_workers=2))

    def meta_batch():
        x = torch.stack([next(batches)[0] for _ in range(tasks)]).to(device)
        x = x.view(tasks, ways, shots + queries, *x.shape[2:])
        return x[:, :, :shots], x[:, :, shots:]  # support and query, as the sampler hands them over

    meta_batch()  # starts the workers
    synchronize(device)
    start = time.perf_counter()
    for _ in range(meta_batches):
        meta_batch()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, store, paths: list, device, task, budget, channels: int) -> None:
    """Time both pipelines on one dataset and print their JSON lines and the summary."""
    tasks, ways, shots, queries = task
    pixels = store.images.float() / 255
    mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))  # the same normalisation for both pipelines
    labels = [c for c, count in enumerate(store.counts.tolist()) for _ in range(count)]
    dataset = ImageFiles(paths, labels, store.images.shape[-1], channels, mean, std)
    seconds = {
        "metarun": time_metarun(store, device, mean, std, task, budget[0]),
        "conventional": time_conventional(dataset, store.offsets.tolist(), device, task, budget[1]),
    }
    rates = {}
    for (pipeline, taken), meta_batches in zip(seconds.items(), budget):
        rates[pipeline] = meta_batches * tasks / taken
        emit(dataset=name, pipeline=pipeline, ways=ways, shots=shots, queries=queries, meta_batch=tasks,
             episodes=meta_batches * tasks, seconds=round(taken, 4), episodes_per_s=round(rates[pipeline], 2),
             device=str(device), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
             load_avg_1min=round(os.getloadavg()[0], 2))  # on a shared machine, other work slows both pipelines
    emit(dataset=name, summary=True, speedup=round(rates["metarun"] / rates["conventional"], 1),
         metarun_episodes_per_s=round(rates["metarun"], 2), conventional_episodes_per_s=round(rates["conventional"], 2))


def omniglot(work: Path, device, budget, meta_batch: int) -> None:
    """Omniglot 20-way 5-shot 15-query, meta-batch 32, 28x28, on the real background subset."""
    shared = Path(os.environ.get("METARUN_SHARED", REPO.parent / "shared"))
    archive = shared / OMNIGLOT_ZIP
    if not archive.is_file():
        emit(dataset="omniglot", skipped=f"{archive} not found; set METARUN_SHARED to the folder holding {OMNIGLOT_ZIP}")
        return
    store = read_images(archive, 28, 1)
    with zipfile.ZipFile(archive) as files:
        files.extractall(work / "omniglot")
    # the store lists classes and their images in sorted path order; the extracted files in the same order
    paths = sorted(work.glob("omniglot/*/*/*/*.png"), key=lambda p: (p.parent.as_posix(), p.as_posix()))
    assert len(paths) == len(store.images), "the extracted files and the store hold the same images"
    measure("omniglot", store, paths, device, (meta_batch, 20, 5, 15), budget, channels=1)
    variable_against_fixed(store, device, 10 * budget[0])


def miniimagenet(work: Path, device, budget, meta_batch: int, classes: int, per_class: int) -> None:
    """miniImageNet 5-way 5-shot 15-query, meta-batch 4, 84x84 RGB, on synthetic JPEGs."""
    root = work / "miniimagenet"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["filename,label"]
    for c in range(classes):
        for i in range(per_class):
            # smooth random pictures compress like photos, unlike pixel noise
            small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
            name = f"n{c:08d}{i:08d}.jpg"
            small.resize((84, 84), Image.Resampling.BICUBIC).save(root / "images" / name, quality=90)
            rows.append(f"{name},n{c:08d}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    load_split(root, "train")  # converts once; training then reads the memory-mapped cache, as here
    store = load_split(root, "train")
    # the store sorts classes by wnid and keeps csv order within a class: the order written above
    paths = [root / "images" / row.split(",")[0] for row in rows[1:]]
    measure("miniimagenet", store, paths, device, (meta_batch, 5, 5, 15), budget, channels=3)


def variable_against_fixed(store, device, episodes: int) -> None:
    """The cost of a variable-way episode against a fixed-way one (the target: at most 2x), both 5-way 1-shot with
    10 queries per class, drawn one at a time as evaluation draws them: Meta-Dataset's sampler with its ways held
    at 5 and its support budget at 5 images, against ``EpisodeSampler``; process CPU time, interleaved rounds."""
    mean, std = [0.0], [1.0]
    fixed = EpisodeSampler(store, device, mean, std)
    plan = VariableEpisodes(store.counts, store.offsets, None, VariableEpisodesConfig(min_ways=5, max_ways=5, max_support=5),
                            device)
    draws = {"fixed": lambda g: fixed.sample(1, g, 5, 1, 10),
             "variable": lambda g: fixed.batch(*plan.draw(1, g), g, padded=True)}
    seconds = dict.fromkeys(draws, 0.0)
    generator = torch.Generator(device=device).manual_seed(0)
    for name, draw in draws.items():  # warm-up
        draw(generator)
    for _ in range(5):  # rounds alternate, so that load on a shared machine falls on both alike
        for name, draw in draws.items():
            synchronize(device)
            start = time.process_time()
            for _ in range(episodes // 5):
                draw(generator)
            synchronize(device)
            seconds[name] += time.process_time() - start
    emit(dataset="omniglot", sampler="variable against fixed", ways=5, shots=1, queries=10, episodes=episodes,
         fixed_ms=round(1000 * seconds["fixed"] / episodes, 4), variable_ms=round(1000 * seconds["variable"] / episodes, 4),
         ratio=round(seconds["variable"] / seconds["fixed"], 2), device=str(device),
         torch_threads=torch.get_num_threads(), load_avg_1min=round(os.getloadavg()[0], 2))


def emit(**fields) -> None:
    """One JSON line on stdout."""
    print(json.dumps(fields), flush=True)


def main(argv=None) -> None:
    """Parse the arguments and run both benchmarks."""
    use_huge_pages()  # as the metarun command does, before any tensor
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script runs, measures nothing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (as hardware.num_threads); default: torch's")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        # on a CPU shared with other work, one thread avoids waiting for a descheduled sibling at every op
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="metarun-bench-") as work:
        if args.quick:
            omniglot(Path(work), device, QUICK_BUDGET, QUICK_META_BATCH)
            miniimagenet(Path(work), device, QUICK_BUDGET, QUICK_META_BATCH, classes=5, per_class=20)
        else:
            omniglot(Path(work), device, BUDGETS["omniglot"], 32)
            miniimagenet(Path(work), device, BUDGETS["miniimagenet"], 4, classes=20, per_class=60)


if __name__ == "__main__":
    main()
