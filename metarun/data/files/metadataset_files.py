"""Meta-Dataset's converted sources (Triantafillou et al., ICLR 2020, "Meta-Dataset: A Dataset of Datasets for
Learning to Learn from Few Examples") on disk → ``dataset_spec.json`` parsed and validated, and each split of a
source decoded once into an ``ImageStore``, without TensorFlow.

Layout, as google-research/meta-dataset's conversion writes it
(``meta_dataset/dataset_conversion/dataset_to_records.py``, ``DatasetConverter``): one folder per source
(``SOURCES``) holding ``dataset_spec.json`` (``write_data_spec``: ``json.dump(spec.to_dict(), f, indent=2)``) and one
TFRecord file per class named ``file_pattern.format(class_id)`` (``DEFAULT_FILE_PATTERN = '{}.tfrecords'``). Each
record is a ``tf.train.Example`` {``image``: bytes_list [encoded JPEG, or PNG], ``label``: int64_list [class id]}
(``write_example``). The converter stores RGB (``write_tfrecord_from_image_files`` converts every image to RGB,
inverting Omniglot's); the reader decodes with ``tf.image.decode_image(..., channels=3)``
(``meta_dataset/data/decoder.py``), so a greyscale image becomes RGB here too.

``dataset_spec.json`` (``meta_dataset/data/dataset_spec.py``: ``to_dict`` writes, ``as_dataset_spec`` and
``load_dataset_spec`` read): JSON object keys are strings, so class ids appear as "0", "1", ...; splits are the
names of ``learning_spec.Split``: "TRAIN", "VALID", "TEST" (``meta_dataset/data/learning_spec.py``). Every kind has
``__class__``, ``name``, ``class_names`` {class id: name}, ``path`` (where the conversion wrote; the loader
replaces it with the folder it reads, as ``source_store`` takes its folder) and ``file_pattern``:
    DatasetSpecification (aircraft, cu_birds, dtd, fungi, quickdraw, vgg_flower, traffic_sign, mscoco):
        ``classes_per_split`` {split: count}; ``images_per_class`` {class id: count} (a {pool: count} dict for
        example-level splits, which the official reader does not support either).
    BiLevelDatasetSpecification (omniglot): ``superclasses_per_split`` {split: count of alphabets};
        ``classes_per_superclass`` {superclass id: count}; ``superclass_names`` {superclass id: alphabet};
        ``images_per_class`` {class id: count}. Superclass ids are numbered train, valid, test; the classes of
        superclass s are the ids after those of superclasses 0..s-1 (``get_class_ids_from_superclass_subclass_inds``).
    HierarchicalDatasetSpecification (ilsvrc_2012): ``split_subgraphs`` {split: [{"wn_id", "words",
        "children_ids", "parents_ids"}]} (``imagenet_specification.export_graph``/``import_graph`` in
        ``meta_dataset/data/imagenet_specification.py``), one isolated WordNet DAG per split (a node may have
        several parents; no wn_id in two splits: ``as_dataset_spec`` refuses that); the split's classes are its
        leaves (nodes without children, ``get_leaves``); ``images_per_class`` {split: {wn_id: images under that
        node}} for every node (``get_num_spanning_images``); ``class_names`` {class id: wn_id}.
Class ids are global and contiguous: train first, then valid, then test (``get_classes(split, classes_per_split)``;
the ImageNet converter numbers each split's leaves in sorted wn_id order), and a split's classes keep that order.
``file_pattern`` must be ``{}.tfrecords`` (``'{}_{}.tfrecords'`` shards are ``NotImplementedError`` in
``meta_dataset/data/reader.py`` too). Real specs ship in ``meta_dataset/dataset_conversion/dataset_specs/``.

The class hierarchy is one concept for both kinds (``Hierarchy``): nodes of class positions within the split.
Sources without one (``DatasetSpecification``) have none. A split's cache is
``<cache_dir>/metadataset-<source>-<split>-<size>px-<fingerprint>.store`` with the fingerprint of
``dataset_spec.json`` and the split's class files, written class after class straight into the memory-mapped file
(memory holds one chunk of images whatever the source's size). Images are resized with ``image_to_array``
(antialiased Lanczos), where the official pipeline resizes bilinearly in TensorFlow.
"""

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from metarun.data.files.imagefiles import decode_into
from metarun.data.files.store import ImageStore, cached_store_by_chunks, fingerprint
from metarun.data.files.tfrecord import FIX, at, parse_example, records
from metarun.data.sampling.variable_episodes import Hierarchy
from metarun.utils.errors import RunError

# the paper's order (Table 1: ImageNet, then the nine others)
SOURCES = ("ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi", "vgg_flower",
           "traffic_sign", "mscoco")
SPLITS = ("train", "val", "test")
SPEC_SPLITS = {"train": "TRAIN", "val": "VALID", "test": "TEST"}  # learning_spec.Split's names in the JSON
SPEC_FILE = "dataset_spec.json"
FILE_PATTERN = "{}.tfrecords"
KINDS = {"DatasetSpecification": None, "BiLevelDatasetSpecification": "bilevel",
         "HierarchicalDatasetSpecification": "dag"}
CHUNK_IMAGES = 2048  # images decoded at a time while a cache is built


@dataclass(frozen=True)
class SourceSpec:
    """The content of a source's ``dataset_spec.json``, independent of where the folder lies.

    Attributes:
        name: the source's name (e.g. "omniglot").
        classes: {split: ((global class id, class name), ...)} in class-id order, for "train", "val", "test".
        images_per_class: {global class id: number of images}.
        hierarchy: {split: Hierarchy or None}.
        file_pattern: the class file's name with "{}" for the class id.
    """

    name: str
    classes: dict
    images_per_class: dict
    hierarchy: dict
    file_pattern: str = FILE_PATTERN

    def file_name(self, class_id: int) -> str:
        """The name of the TFRecord file of ``class_id``."""
        return self.file_pattern.format(class_id)

    def split_classes(self, source_dir: Path, split: str) -> tuple:
        """``classes[split]``; a split that is unknown or has no classes in this source is a RunError."""
        if split not in SPLITS:
            raise ValueError(f"Meta-Dataset has no split {split!r}; use one of {', '.join(SPLITS)}")
        if not self.classes[split]:
            has = [s for s in SPLITS if self.classes[s]]
            raise RunError(f"{Path(source_dir) / SPEC_FILE}: {self.name} has no {split} classes (only "
                           f"{', '.join(has) or 'none'}); leave {self.name} out of the {split} sources")
        return self.classes[split]


def read_spec(source_dir: Path, splits: tuple = ()) -> SourceSpec:
    """The validated ``dataset_spec.json`` of the source folder ``source_dir``.

    Args:
        splits: the splits the caller will use: each must have classes (a source may have none in some, e.g.
            traffic_sign trains nothing).

    Raises:
        RunError: a missing, unreadable or invalid spec, a class file it names that is missing, or an empty split
            in ``splits``; one line naming the file and the fix.
    """
    path = Path(source_dir) / SPEC_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as err:
        if path.with_suffix(".pkl").exists():
            raise RunError(f"no {path}, only the older dataset_spec.pkl; convert it with Meta-Dataset's "
                           "load_dataset_spec(folder, convert_from_pkl=True) or re-run its conversion") from err
        raise RunError(f"no {path}; give the folder that Meta-Dataset's conversion (meta_dataset/"
                       "dataset_conversion/convert_datasets_to_records.py) wrote for that source") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"cannot read {path} ({err.__class__.__name__}: {err}); {FIX}") from err
    try:
        spec = _parse(raw)
    except (ValueError, TypeError) as err:
        raise RunError(f"{path} is not a Meta-Dataset dataset spec: {err}; {FIX}") from err
    _check_files(Path(source_dir), spec)
    for split in splits:
        spec.split_classes(source_dir, split)
    return spec


def _parse(raw) -> SourceSpec:
    """A SourceSpec from the JSON's object; ValueError/TypeError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"it holds a {type(raw).__name__}, not an object")
    kind = _get(raw, "__class__", "the spec")
    if kind not in KINDS:
        raise ValueError(f"__class__ is {kind!r}, not one of {', '.join(KINDS)}")
    if _get(raw, "file_pattern", "the spec") != FILE_PATTERN:
        raise ValueError(f"file_pattern is {raw['file_pattern']!r}: only {FILE_PATTERN!r} is read (one file per "
                         "class; the official reader does not read shards either)")
    parse = {None: _flat, "bilevel": _bilevel, "dag": _dag}[KINDS[kind]]
    classes, images, hierarchy = parse(raw)
    return SourceSpec(str(_get(raw, "name", "the spec")), classes, images, hierarchy, FILE_PATTERN)


def _flat(raw: dict) -> tuple:
    """(classes, images per class, hierarchy) of a DatasetSpecification."""
    ids = _split_ranges(_split_counts(raw, "classes_per_split"))
    names = _numbered(raw, "class_names", ids["test"].stop, str)
    images = _numbered(raw, "images_per_class", ids["test"].stop, _count)
    return {s: tuple((i, names[i]) for i in ids[s]) for s in SPLITS}, images, dict.fromkeys(SPLITS)


def _bilevel(raw: dict) -> tuple:
    """(classes, images per class, hierarchy) of a BiLevelDatasetSpecification: alphabets as nodes."""
    superclasses = _split_ranges(_split_counts(raw, "superclasses_per_split"))
    total = superclasses["test"].stop
    sizes = _numbered(raw, "classes_per_superclass", total, _count)
    super_names = _numbered(raw, "superclass_names", total, str)
    starts = [0]  # the first class id of each superclass
    for s in range(total):
        starts.append(starts[-1] + sizes[s])
    names = _numbered(raw, "class_names", starts[-1], str)
    images = _numbered(raw, "images_per_class", starts[-1], _count)
    classes, hierarchy = {}, {}
    for split, supers in superclasses.items():
        first = starts[supers.start]
        classes[split] = tuple((i, names[i]) for i in range(first, starts[supers.stop]))
        nodes = tuple(tuple(range(starts[s] - first, starts[s + 1] - first)) for s in supers)
        hierarchy[split] = Hierarchy("bilevel", nodes, tuple(super_names[s] for s in supers)) if nodes else None
    return classes, images, hierarchy


def _dag(raw: dict) -> tuple:
    """(classes, images per class, hierarchy) of a HierarchicalDatasetSpecification: WordNet nodes as nodes."""
    graphs = _get(raw, "split_subgraphs", "the spec")
    counts = _get(raw, "images_per_class", "the spec")
    splits, seen = {}, set()
    for split, key in SPEC_SPLITS.items():
        splits[split] = _graph(_get(graphs, key, "split_subgraphs"), key)
        if seen & set(splits[split]):
            raise ValueError(f"split_subgraphs.{key} repeats a wn_id of another split (e.g. "
                             f"{min(seen & set(splits[split]))})")
        seen |= set(splits[split])
    ids = _split_ranges({s: sum(not children for children in g.values()) for s, g in splits.items()})
    names = _numbered(raw, "class_names", ids["test"].stop, str)
    classes, images, hierarchy = {}, {}, {}
    for split, graph in splits.items():
        classes[split] = tuple((i, names[i]) for i in ids[split])
        leaves = {name: position for position, (_, name) in enumerate(classes[split])}
        if set(leaves) != {n for n, children in graph.items() if not children}:
            raise ValueError(f"class_names {ids[split].start}..{ids[split].stop - 1} are not the leaves of "
                             f"split_subgraphs.{SPEC_SPLITS[split]}")
        split_counts = _get(counts, SPEC_SPLITS[split], "images_per_class")
        images.update((i, _count(_get(split_counts, name, f"images_per_class.{SPEC_SPLITS[split]}")))
                      for i, name in classes[split])
        spans = _spans(graph, SPEC_SPLITS[split])
        order = sorted(graph)
        hierarchy[split] = Hierarchy("dag", tuple(tuple(sorted(leaves[n] for n in spans[node])) for node in order),
                                     tuple(order)) if order else None
    return classes, images, hierarchy


def _graph(nodes, key: str) -> dict:
    """{wn_id: children wn_ids} of an exported split graph, whose links must stay inside it."""
    if not isinstance(nodes, list):
        raise ValueError(f"split_subgraphs.{key} is not a list of nodes")
    graph, parents = {}, {}
    for node in nodes:
        wn_id = str(_get(node, "wn_id", f"a node of split_subgraphs.{key}"))
        if wn_id in graph:
            raise ValueError(f"split_subgraphs.{key} lists {wn_id} twice")
        graph[wn_id] = [str(c) for c in _get(node, "children_ids", f"node {wn_id}")]
        parents[wn_id] = [str(p) for p in _get(node, "parents_ids", f"node {wn_id}")]
    for wn_id in graph:
        outside = [n for n in graph[wn_id] + parents[wn_id] if n not in graph]
        if outside:
            raise ValueError(f"node {wn_id} of split_subgraphs.{key} links to {outside[0]}, which is not in that split")
    return graph


def _spans(graph: dict, key: str) -> dict:
    """{wn_id: the leaves under it (itself for a leaf)}, children before parents; a cycle is a ValueError."""
    parents = {n: [] for n in graph}
    for node, children in graph.items():
        for child in children:
            parents[child].append(node)
    waiting = {n: len(set(children)) for n, children in graph.items()}
    ready = [n for n, count in waiting.items() if not count]
    spans = {n: {n} for n in ready}
    while ready:
        node = ready.pop()
        for parent in set(parents[node]):
            spans.setdefault(parent, set()).update(spans[node])
            waiting[parent] -= 1
            if not waiting[parent]:
                ready.append(parent)
    if any(waiting.values()):
        raise ValueError(f"split_subgraphs.{key} has a cycle (through {min(n for n, c in waiting.items() if c)})")
    return spans


def _get(mapping, key: str, where: str):
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} is not an object")
    if key not in mapping:
        raise ValueError(f"{where} has no {key!r}")
    return mapping[key]


def _split_counts(raw: dict, key: str) -> dict:
    """{split: count} of the spec's ``key`` ({"TRAIN": n, "VALID": n, "TEST": n})."""
    return {split: _count(_get(_get(raw, key, "the spec"), name, key)) for split, name in SPEC_SPLITS.items()}


def _split_ranges(counts: dict) -> dict:
    """{split: range of ids}: contiguous, train first, then val, then test (dataset_spec.get_classes)."""
    ranges, start = {}, 0
    for split in SPLITS:
        ranges[split], start = range(start, start + counts[split]), start + counts[split]
    return ranges


def _numbered(raw: dict, key: str, total: int, convert) -> dict:
    """{i: convert(value)} of the spec's ``key``, an object keyed "0".."total-1", exactly those."""
    values = _get(raw, key, "the spec")
    if not isinstance(values, dict):
        raise ValueError(f"{key} is not an object")
    try:
        numbered = {int(k): v for k, v in values.items()}
    except ValueError as err:
        raise ValueError(f"{key} has a key that is not a number ({err})") from err
    missing = [i for i in range(total) if i not in numbered]
    if missing or len(numbered) != total:
        what = f"has no entry {missing[0]}" if missing else f"has {len(numbered)} entries"
        raise ValueError(f"{key} {what} where the spec's splits have ids 0..{total - 1}")
    return {i: convert(numbered[i]) for i in range(total)}


def _count(value) -> int:
    """A count in the spec: a non-negative int (a {pool: count} dict means example-level splits: unsupported)."""
    if isinstance(value, dict):
        raise ValueError("images_per_class has example-level pools ({pool: count}), which metarun does not read")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ValueError(f"{value!r} is not a count")
    return int(value)


def _check_files(source_dir: Path, spec: SourceSpec) -> None:
    """Every class file the spec names exists (the spec says how many records each must hold)."""
    missing = [(i, n) for s in SPLITS for i, n in spec.classes[s] if not (source_dir / spec.file_name(i)).is_file()]
    if missing:
        (class_id, name), more = missing[0], f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RunError(f"{source_dir / SPEC_FILE} names class {class_id} ({name}) but "
                       f"{source_dir / spec.file_name(class_id)} does not exist{more}; copy the missing class files there "
                       "or re-run the Meta-Dataset conversion for that source")


def source_store(source_dir: Path, spec: SourceSpec, split: str, image_size: int,
                 cache_dir: Optional[Path] = None) -> ImageStore:
    """The ``split`` of the source in ``source_dir`` (``spec`` its ``read_spec``), uint8 RGB [N, 3, S, S] with
    S = ``image_size``, classes in spec order, decoded once into ``cache_dir`` (default
    ``<source_dir>/.metarun-cache``) and memory-mapped after.

    Raises:
        RunError: an empty split, or a class file whose records do not match the spec (count, label, a damaged
            record, an image that does not decode); no cache is left behind.
    """
    source_dir = Path(source_dir)
    classes = spec.split_classes(source_dir, split)
    files = [source_dir / spec.file_name(class_id) for class_id, _ in classes]
    # the spec and this split's files only: a cache folder inside source_dir must not change the key
    key = fingerprint(source_dir / SPEC_FILE, *files)
    name = f"metadataset-{spec.name}-{split}-{image_size}px-{key}.store"
    cache = Path(cache_dir or source_dir / ".metarun-cache") / name

    def plan() -> tuple:
        def fill(images: torch.Tensor, written) -> None:
            decode_into(images, _images(spec, files, classes), _decoded, f"{spec.name} {split}", CHUNK_IMAGES, written)

        counts = [spec.images_per_class[class_id] for class_id, _ in classes]
        return tuple(name for _, name in classes), counts, (3, image_size, image_size), fill

    return cached_store_by_chunks(cache, plan)


def _images(spec: SourceSpec, files: list, classes: tuple):
    """Yield (file, record number, encoded image) class after class, checking each record's label and each
    file's record count against the spec."""
    for path, (class_id, name) in zip(files, classes):
        expected, count = spec.images_per_class[class_id], 0
        for index, data in enumerate(records(path)):
            if count == expected:
                raise _mismatch(path, class_id, name, expected, f"more than {expected}")
            yield path, index, _image_bytes(_example(path, index, data), path, index, class_id)
            count += 1
        if count != expected:
            raise _mismatch(path, class_id, name, expected, count)


def _mismatch(path: Path, class_id: int, name: str, expected: int, found) -> RunError:
    return RunError(f"{path} holds {found} records where {SPEC_FILE} gives class {class_id} ({name}) {expected} "
                    f"images; {FIX}")


def _example(path: Path, index: int, data: bytes) -> dict:
    try:
        return parse_example(data)
    except ValueError as err:
        raise RunError(f"{at(path, index)} is not a tf.train.Example ({err}); {FIX}") from err


def _image_bytes(example: dict, path: Path, index: int, class_id: int) -> bytes:
    """The record's encoded image, after checking that its label is ``class_id``."""
    image, label = example.get("image"), example.get("label")
    where = at(path, index)
    if not (isinstance(label, list) and len(label) == 1 and isinstance(label[0], int)):
        raise RunError(f"{where} has no single int64 'label' (found {label!r}); {FIX}")
    if label[0] != class_id:
        raise RunError(f"{where} is labelled {label[0]} in the file of class {class_id}; {FIX}")
    if not (isinstance(image, list) and len(image) == 1 and isinstance(image[0], bytes)):
        raise RunError(f"{where} has no single bytes 'image' (found {len(image or [])} values); {FIX}")
    return image[0]


def _decoded(item: tuple) -> Image.Image:
    """The RGB image of an (file, record number, encoded image) item, as decode_image(channels=3) gives it."""
    path, index, data = item
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception as err:  # a damaged image surfaces as many exception types (PIL, zlib, struct); the fix is one
        raise RunError(f"{at(path, index)} holds an image that does not decode ({err.__class__.__name__}: {err}); "
                       f"{FIX}") from err
