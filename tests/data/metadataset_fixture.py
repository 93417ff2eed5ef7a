"""Tiny Meta-Dataset sources written as the official conversion writes them: one TFRecord file per class (masked
CRC32C framing, a serialised tf.train.Example {image: encoded bytes, label: int64} per record) and a
``dataset_spec.json`` in the official schema (see ``metarun.data.files.metadataset_files``), for the file layer's tests
and end-to-end CLI runs.

Each class's images are a class-specific coarse colour (or grey) pattern plus noise, so a short ProtoNet run can
tell the classes apart; ``class_images`` regenerates them to compare a decoded store with what was written.
"""

import io
import json
import struct
from pathlib import Path

import crc32c
import numpy as np
from PIL import Image

SPLIT_KEYS = ("TRAIN", "VALID", "TEST")
CLASS_NAMES = {None: "DatasetSpecification", "bilevel": "BiLevelDatasetSpecification",
               "dag": "HierarchicalDatasetSpecification"}
ALPHABET_SIZE = 3  # characters per alphabet in a bilevel source (the last alphabet of a split may have fewer)
PATTERN = 4  # the class pattern's cells per side, upscaled to the image size


def class_images(class_id: int, count: int, image_size: int, seed: int = 0, grey: bool = False) -> np.ndarray:
    """uint8 [count, S, S, 3] (or [count, S, S] when ``grey``): class ``class_id``'s pattern plus per-image noise."""
    rng = np.random.default_rng([seed, class_id])
    cells = rng.integers(0, 256, (PATTERN, PATTERN) if grey else (PATTERN, PATTERN, 3))
    scale = -(-image_size // PATTERN)
    pattern = cells.repeat(scale, 0).repeat(scale, 1)[:image_size, :image_size]
    noise = rng.normal(0, 12, (count, *pattern.shape))
    return np.clip(pattern + noise, 0, 255).astype(np.uint8)


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """``pixels`` (uint8 HxW or HxWx3) encoded as ``image_format`` ("PNG" or "JPEG")."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def varint(value: int) -> bytes:
    """A protobuf varint; negative int64 as its 64-bit two's complement (ten bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited (wire type 2) protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(image: bytes, label: int) -> bytes:
    """A serialised tf.train.Example {image: bytes_list [image], label: int64_list [label]} (packed, as TF writes)."""
    image_feature = field(1, field(1, image))  # Feature.bytes_list = BytesList {value}
    label_feature = field(3, field(1, varint(label)))  # Feature.int64_list = Int64List {packed value}
    entries = field(1, field(1, b"image") + field(2, image_feature))  # Features.feature map entries {key, value}
    entries += field(1, field(1, b"label") + field(2, label_feature))
    return field(1, entries)  # Example.features = Features {feature map entries}


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord record holding ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write_tfrecord(path: Path, payloads) -> None:
    """A TFRecord file of ``payloads`` (bytes each)."""
    Path(path).write_bytes(b"".join(frame(p) for p in payloads))


def write_source(root: Path, name: str, classes_per_split, images_per_class, kind=None, image_size: int = 20,
                 seed: int = 0, image_format: str = "JPEG", grey: bool = False) -> Path:
    """Write the source ``root/name``: its class files and ``dataset_spec.json``; return the folder.

    Args:
        classes_per_split: (train, val, test) numbers of classes; global class ids run train, val, test.
        images_per_class: an int, or one count per global class id.
        kind: None (DatasetSpecification), "bilevel" (alphabets of ``ALPHABET_SIZE`` characters) or "dag" (a
            small WordNet-like DAG per split, some leaves under two parents).
        grey: single-channel images (as Omniglot's originals), else RGB.
    """
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(classes_per_split)
    counts = [images_per_class] * total if isinstance(images_per_class, int) else list(images_per_class)
    assert len(counts) == total, "images_per_class needs one count per class"
    for class_id, count in enumerate(counts):
        images = class_images(class_id, count, image_size, seed, grey)
        payloads = (example(encode_image(image, image_format), class_id) for image in images)
        write_tfrecord(folder / f"{class_id}.tfrecords", payloads)
    spec = {"name": name, **SPECS[kind](name, classes_per_split, counts), "path": str(folder),
            "file_pattern": "{}.tfrecords", "__class__": CLASS_NAMES[kind]}
    (folder / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    return folder


def _flat_spec(name: str, classes_per_split, counts: list) -> dict:
    return {"classes_per_split": dict(zip(SPLIT_KEYS, classes_per_split)),
            "images_per_class": {str(i): c for i, c in enumerate(counts)},
            "class_names": {str(i): f"{name}-class{i:03d}" for i in range(len(counts))}}


def _bilevel_spec(name: str, classes_per_split, counts: list) -> dict:
    sizes = []  # characters per alphabet, alphabets numbered train, val, test
    superclasses_per_split = {}
    for key, classes in zip(SPLIT_KEYS, classes_per_split):
        split_sizes = [min(ALPHABET_SIZE, classes - start) for start in range(0, classes, ALPHABET_SIZE)]
        superclasses_per_split[key] = len(split_sizes)
        sizes += split_sizes
    alphabets = [f"Alphabet_{s:02d}" for s in range(len(sizes))]
    class_names = [f"{alphabet}-character{c + 1:02d}" for alphabet, size in zip(alphabets, sizes) for c in range(size)]
    return {"superclasses_per_split": superclasses_per_split,
            "classes_per_superclass": {str(s): size for s, size in enumerate(sizes)},
            "images_per_class": {str(i): c for i, c in enumerate(counts)},
            "superclass_names": {str(s): a for s, a in enumerate(alphabets)},
            "class_names": {str(i): n for i, n in enumerate(class_names)}}


def _dag_spec(name: str, classes_per_split, counts: list) -> dict:
    graphs, images, class_names, start = {}, {}, {}, 0
    for s, (key, classes) in enumerate(zip(SPLIT_KEYS, classes_per_split)):
        leaves = [f"n{i:08d}" for i in range(start, start + classes)]  # sorted wn_id order is class-id order
        class_names.update({str(i): leaf for i, leaf in zip(range(start, start + classes), leaves)})
        children = dag(leaves, s)
        graphs[key] = export(children)
        leaf_images = dict(zip(leaves, counts[start:start + classes]))
        images[key] = {node: sum(leaf_images[leaf] for leaf in spanned(children, node)) for node in children}
        start += classes
    return {"split_subgraphs": graphs, "images_per_class": images, "class_names": class_names}


def dag(leaves: list, split_index: int) -> dict:
    """{wn_id: children} of a small DAG over ``leaves``: a root over groups of three consecutive leaves that overlap
    by one (the shared leaf has two parents, as in WordNet), or straight over up to three leaves; no group has a
    single child (the official graph collapses those)."""
    if not leaves:
        return {}
    children = {leaf: [] for leaf in leaves}
    root = f"n9{split_index}999999"
    if len(leaves) <= 3:
        return {**children, root: list(leaves)}
    groups = {f"n9{split_index}{j:06d}": leaves[i:i + 3] for j, i in enumerate(range(0, len(leaves) - 1, 2))}
    return {**children, **groups, root: list(groups)}


def spanned(children: dict, node: str) -> set:
    """The leaves under ``node`` (itself for a leaf)."""
    return {node} if not children[node] else set().union(*(spanned(children, c) for c in children[node]))


def export(children: dict) -> list:
    """The graph as imagenet_specification.export_graph writes it: nodes sorted by wn_id, ids sorted."""
    parents = {node: sorted(p for p, cs in children.items() if node in cs) for node in children}
    return [{"wn_id": node, "words": "leaf" if not children[node] else "group", "children_ids": sorted(children[node]),
             "parents_ids": parents[node]} for node in sorted(children)]


SPECS = {None: _flat_spec, "bilevel": _bilevel_spec, "dag": _dag_spec}


def write_sources(root: Path, image_size: int = 20, seed: int = 0) -> dict:
    """Three small sources under ``root``: a flat "aircraft" (JPEG), an "omniglot" with alphabets (grey PNG) and an
    "ilsvrc_2012" with a WordNet-like DAG (JPEG); every split has at least 5 classes of 10 to 12 images.
    Returns {name: folder}."""

    def counts(classes) -> list:
        return [10 + i % 3 for i in range(sum(classes))]

    layouts = {"aircraft": ((8, 5, 5), None, {}),
               "omniglot": ((9, 5, 6), "bilevel", {"image_format": "PNG", "grey": True}),
               "ilsvrc_2012": ((8, 5, 6), "dag", {})}
    return {name: write_source(root, name, classes, counts(classes), kind, image_size, seed, **options)
            for name, (classes, kind, options) in layouts.items()}
