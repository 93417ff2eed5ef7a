"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015, "Human-level concept learning through probabilistic program
induction", Science): 1,623 handwritten characters from 50 alphabets, 20 drawers each, 105x105 binary images.

Files: the official ``images_background.zip`` (30 alphabets, 964 characters) and ``images_evaluation.zip``
(20 alphabets, 659 characters), or their extracted folders, or any folder/zip in the same
``<Alphabet>/<character>/<image>.png`` layout, or torchmeta's cache ``data.hdf5`` (groups ``images_background``
/ ``images_evaluation``, datasets ``<alphabet>/<character>``), all found under ``dataset.root``; the official
zips are downloaded when missing and ``dataset.download`` is true.

Preprocessing: resized to ``image_size`` (28 in the papers) with antialiasing and inverted so that ink is 1
and background 0 in [0, 1] (as in the MAML code and torchmeta's cache); no further normalisation.

Splits (``dataset.split``):
    vinyals: the protocol of Vinyals et al. (2016, "Matching Networks") and Finn et al. (2017, MAML): every
        character of both sets, shuffled by ``torch.randperm`` with seed 0 over the characters sorted by
        (set, alphabet, character); the first 1,100 meta-train, the next 100 validation (carved from the
        1,200 meta-train characters, as in the MAML code), the remaining 423 meta-test. With other sets the
        sizes scale: the first round(n·1100/1623) train, up to round(n·1200/1623) validation, the rest test.
        The character lists are this fixed permutation's, not torchmeta's published lists.
    lake: Lake et al.'s background/evaluation protocol: meta-train on the background set less
        ``val_alphabets`` of its alphabets (picked by ``torch.randperm`` with seed 0 over the sorted
        alphabet names), validate on those, meta-test on the evaluation set.
    folders: explicit lists of sets for ``train``/``val``/``test``; with ``exclude_train_alphabets`` the
        val/test sets lose every alphabet that meta-train has, e.g. meta-train on the alphabets of
        ``images_background_small1`` and meta-test on those only ``images_background_small2`` has.
A character that appears in several sets of one split is taken once.

Rotations (``dataset.rotations``; null means on for vinyals, off otherwise): each character rotated by 90,
180 and 270 degrees becomes a new class in its own split (Santoro et al., 2016; Vinyals et al., 2016), in the
splits ``dataset.extended_splits`` lists (all three by default). ``dataset.mirrors`` likewise adds each
character mirrored left-right as a new class (after rotations: 8 classes per character).

Lake et al.'s own one-shot protocol (their 20-way runs, and the "minimal" condition of 5 background
alphabets: ``experiment=omniglot_challenge_5alphabets``): ``dataset.episodes_within=group`` draws every episode's
characters from one alphabet, and ``dataset.drawers_apart`` takes the support images from other drawers than
the query images (a character's 20 images, sorted by name, are drawers 01-20: ``<id>_<drawer>.png``). With
``dataset.augment``, meta-training images get random affine distortions (``dataset.affine``, Koch et al., 2015)
on the device; with ``dataset.strokes.files`` (the background set's pen strokes, which the challenge allows), a
share of them is first re-drawn from their strokes, each stroke perturbed (``metarun.data.sampling.strokes``).

Each set is decoded once into an ImageStore cached as
``<dataset.cache_dir>/omniglot-<set>-<size>px-<fingerprint of the files>.store``.
"""

from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from metarun.config.datasets import OmniglotConfig
from metarun.data import Dataset
from metarun.data.files.download import download
from metarun.data.files.imagefiles import image_to_array, read_images, require_h5py
from metarun.data.files.store import ImageStore, cached_store, fingerprint
from metarun.data.sampling.augment import check_affine, random_affine
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.data.sampling.sampler import group as alphabet  # Omniglot's class groups are its alphabets
from metarun.data.sampling.strokes import Redrawing, StrokeTable, check_strokes, read_strokes
from metarun.utils.disk import exists
from metarun.utils.errors import RunError

URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{}.zip"
MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718", "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
TORCHMETA_CACHE = "data.hdf5"
SEED = 0
# Vinyals et al.'s split of the 1,623 characters: 1,100 train + 100 validation, then 423 test
VINYALS = {"total": 1623, "train": 1100, "train_and_val": 1200}


def build(settings, device: torch.device) -> ImageTasks:
    """The Omniglot task source of an ``OmniglotConfig``."""
    if settings.split not in SPLITS:
        raise ValueError(f"dataset.split={settings.split} is not a split; choose one of {', '.join(SPLITS)}")
    rotate = settings.split == "vinyals" if settings.rotations is None else settings.rotations
    ranges = OmegaConf.to_container(settings.affine)
    check_affine(**ranges, rotation_classes=rotate)  # before the sets are read
    check_strokes(settings.strokes)
    stores = SPLITS[settings.split](settings)
    for split, store in stores.items():
        if store.num_classes == 0:
            raise ValueError(f"dataset.split={settings.split} leaves no characters for {split} (after "
                             "exclude_train_alphabets where set); give it more sets or sets with other alphabets")
    unknown = set(settings.extended_splits) - set(stores)
    if unknown:
        raise ValueError(f"dataset.extended_splits={list(settings.extended_splits)} names "
                         f"{', '.join(sorted(unknown))}, not a split; list some of train, val, test")
    table = stroke_table(settings, stores["train"]) if settings.strokes.files else None
    for extend, extend_table, on in ((with_rotations, StrokeTable.with_rotations, rotate),
                                     (with_mirrors, StrokeTable.with_mirrors, settings.mirrors)):
        if on:
            stores = {split: extend(store) if split in settings.extended_splits else store
                      for split, store in stores.items()}
            table = extend_table(table) if table is not None and "train" in settings.extended_splits else table
    augment = partial(random_affine, **ranges)
    redraw = None if table is None else Redrawing(table.to(device), OmegaConf.to_object(settings.strokes),
                                                  settings.image_size)
    return ImageTasks.from_config(settings, stores, device, normalisation=([0.0], [1.0]), inverted=True,
                                  augment=augment, redraw=redraw)


def stroke_table(settings, store: ImageStore) -> StrokeTable:
    """The drawings behind ``store``'s rows, from the stroke sets ``dataset.strokes.files`` under ``dataset.root``,
    points one output pixel apart (all a rendering at ``image_size`` needs)."""
    drawings = {}
    for entry in settings.strokes.files:
        path = Path(settings.root) / entry
        if not exists(path):
            raise FileNotFoundError(f"dataset.strokes.files names {entry}, which is not in {settings.root}; put "
                                    "Omniglot's stroke files there (strokes_background.zip for images_background) or "
                                    "correct it")
        drawings.update(read_strokes(path, spacing=1 / settings.image_size))
    return StrokeTable.build({name: drawings.get(name, []) for name in store.class_names}, store)


def vinyals(settings) -> dict:
    """Characters of both sets, shuffled with a fixed seed and cut 1100/100/423 (scaled to the sets given)."""
    characters = union([load_set(settings, settings.background), load_set(settings, settings.evaluation)])
    order = torch.randperm(characters.num_classes, generator=torch.Generator().manual_seed(SEED)).tolist()
    train_end, val_end = vinyals_sizes(characters.num_classes)
    return {"train": characters.select(order[:train_end]), "val": characters.select(order[train_end:val_end]),
            "test": characters.select(order[val_end:])}


def vinyals_sizes(n: int) -> tuple:
    """Where meta-train and validation end among ``n`` shuffled characters: (1100, 1200) for all 1,623."""
    return tuple(round(n * VINYALS[k] / VINYALS["total"]) for k in ("train", "train_and_val"))


def lake(settings) -> dict:
    """Background alphabets for meta-train (less ``val_alphabets`` held out for validation), evaluation for test."""
    train, val = hold_out(load_set(settings, settings.background), settings.val_alphabets, "the background set")
    return {"train": train, "val": val, "test": load_set(settings, settings.evaluation)}


def hold_out(characters: ImageStore, count: int, source: str) -> tuple:
    """``characters`` split into (the rest, ``count`` alphabets chosen with a fixed seed) for validation; with
    ``count`` 0, (``characters``, ``characters``)."""
    alphabets = sorted({alphabet(name) for name in characters.class_names})
    if not 0 <= count < len(alphabets):
        raise ValueError(f"dataset.val_alphabets={count} must be between 0 and {len(alphabets) - 1} "
                         f"({source} has {len(alphabets)} alphabets)")
    if count == 0:  # nothing held out: validation sees the training alphabets
        return characters, characters
    order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(SEED)).tolist()
    held_out = {alphabets[i] for i in order[:count]}
    return (characters.where(lambda name: alphabet(name) not in held_out),
            characters.where(lambda name: alphabet(name) in held_out))


def folders(settings) -> dict:
    """The sets listed in ``train``/``val``/``test``, optionally without val/test alphabets that train has.

    Without ``val`` sets, ``val_alphabets`` alphabets of the train sets are held out for validation, so that
    the test alphabets never choose the checkpoint the meta-test scores.
    """
    for split in ("train", "test"):
        if not settings[split]:
            raise ValueError(f"dataset.split=folders needs dataset.{split}=[<set>, ...]: folders or zips under dataset.root")
    stores = {split: union([load_set(settings, entry) for entry in settings[split]])
              for split in ("train", "val", "test") if settings[split]}
    seen = {alphabet(name) for name in stores["train"].class_names}
    if not settings.val:
        stores["train"], stores["val"] = hold_out(stores["train"], settings.val_alphabets, "dataset.train")
    if settings.exclude_train_alphabets:
        for split in ("val", "test") if settings.val else ("test",):
            stores[split] = stores[split].where(lambda name: alphabet(name) not in seen)
    return stores


SPLITS = {"vinyals": vinyals, "lake": lake, "folders": folders}


def load_set(settings, entry: str) -> ImageStore:
    """The characters of one set (a folder, a zip, or a group of torchmeta's hdf5) under ``dataset.root``, ink = 255."""
    root = Path(settings.root)
    candidates = [(root / entry, read_set), (root / f"{entry}.zip", read_set), (root / TORCHMETA_CACHE, partial(read_torchmeta, group=entry))]
    found = [(path, reader) for path, reader in candidates if exists(path)]
    if not found and entry in MD5 and settings.download:
        found = [(download(URL.format(entry), root / f"{entry}.zip", MD5[entry]), read_set)]
    if not found:
        official = f" (download: {URL.format(entry)})" if entry in MD5 else ""
        raise FileNotFoundError(f"Omniglot set {entry} is not in {root}: expected {entry}.zip, a folder {entry}/ or "
                                f"torchmeta's {TORCHMETA_CACHE}{official}; put it there or set dataset.root")
    path, reader = found[0]
    key = f"omniglot-{Path(entry).stem}-{settings.image_size}px-{fingerprint(path)}.store"
    return cached_store(Path(settings.cache_dir) / key, lambda: reader(path, settings.image_size))


def read_set(path: Path, size: int) -> ImageStore:
    """A folder or zip of ``<Alphabet>/<character>/<image>.png``, inverted so that ink is 255.

    Folders wrapped around that layout (a zip of ``extra/images_background/<Alphabet>/...``) are looked
    through; any other depth is refused, since the alphabet of a class decides which classes a split excludes.
    """
    store = read_images(path, size, channels=1)
    names = [name.split("/") for name in store.class_names]
    while all(len(parts) > 2 for parts in names) and len({parts[0] for parts in names}) == 1:
        names = [parts[1:] for parts in names]
    odd = next((parts for parts in names if len(parts) != 2), None)
    if odd is not None:
        raise RunError(f"{path} holds images in {'/'.join(odd)}/, not <Alphabet>/<character>/<image>.png; give the "
                       "folder or zip whose top-level folders are the alphabets")
    return ImageStore(255 - store.images, store.offsets, tuple("/".join(parts) for parts in names))


def read_torchmeta(path: Path, size: int, group: str) -> ImageStore:
    """One group of torchmeta's Omniglot ``data.hdf5`` (already inverted: ink is 255), resized to ``size``."""
    h5py = require_h5py(path, "the official zips")
    try:
        with h5py.File(path, "r") as cache:
            if group not in cache:
                raise RunError(f"{path} has no group {group} (it has {', '.join(cache)}); name one of those sets")
            names = sorted(f"{a}/{c}" for a in cache[group] for c in cache[group][a])
            arrays = [cache[group][name][()] for name in names]
    except OSError as err:
        raise RunError(f"cannot read torchmeta's cache {path} ({err}); delete it or point dataset.root elsewhere") from err
    # resized in the PNGs' polarity (white background) and inverted after, exactly as ``read_set`` does, so both
    # give the same pixels: Lanczos overshoot is clipped at 0 and 255, which inversion does not commute with
    images = 255 - np.stack([image_to_array(Image.fromarray(255 - image), size, 1) for array in arrays for image in array])
    offsets = torch.tensor([0, *(len(a) for a in arrays)]).cumsum(0)
    return ImageStore(torch.from_numpy(images), offsets, tuple(names))


def with_rotations(store: ImageStore) -> ImageStore:
    """The store with every class also rotated by 90, 180 and 270 degrees, each a new class."""
    return ImageStore.cat([
        ImageStore(store.images.rot90(k, dims=(2, 3)), store.offsets, tuple(f"{name}/rot{90 * k:03d}" for name in store.class_names))
        for k in range(4)
    ])


def with_mirrors(store: ImageStore) -> ImageStore:
    """The store with every class also mirrored left-right, each a new class (``<name>/mirror``)."""
    mirrored = ImageStore(store.images.flip(3), store.offsets, tuple(f"{name}/mirror" for name in store.class_names))
    return ImageStore.cat([store, mirrored])


def union(stores: list) -> ImageStore:
    """The classes of ``stores`` together, each class name once (its first occurrence)."""
    merged = ImageStore.cat(stores)
    first = {}
    for index, name in enumerate(merged.class_names):
        first.setdefault(name, index)
    return merged.select(list(first.values()))


DATASET = Dataset(build, OmniglotConfig)
