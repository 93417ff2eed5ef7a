"""Meta-Dataset sources: dataset_spec.json of the three official kinds parsed into classes per split and one
hierarchy concept; each split decoded once into a memory-mapped store; a spec or class file that does not match
is a one-line RunError naming the file and leaves no cache."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from metarun.data.files.metadataset_files import SOURCES, Hierarchy, read_spec, source_store
from metarun.utils.errors import RunError
from tests.data.metadataset_fixture import (
    class_images,
    encode_image,
    example,
    frame,
    write_source,
    write_sources,
    write_tfrecord,
)

SIZE = 20


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("pristine"), SIZE)


@pytest.fixture
def sources(pristine, tmp_path):
    """A fresh copy of the three fixture sources, for a test to change."""
    return {name: shutil.copytree(folder, tmp_path / "sources" / name) for name, folder in pristine.items()}


def one_line(call, *expected):
    with pytest.raises(RunError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and all(text in message for text in expected), message
    return message


def no_cache_left(cache) -> bool:
    return not cache.exists() or not any(cache.iterdir())  # no store, no hidden temporary file


def edit_spec(folder, change):
    path = folder / "dataset_spec.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_sources_are_the_papers_ten():
    assert SOURCES == ("ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi", "vgg_flower",
                       "traffic_sign", "mscoco")


def test_a_flat_spec_numbers_classes_train_val_test(pristine):
    spec = read_spec(pristine["aircraft"], ("train", "val", "test"))
    assert spec.name == "aircraft" and spec.file_name(3) == "3.tfrecords"
    assert [i for i, _ in spec.classes["train"]] == list(range(8))
    assert [i for i, _ in spec.classes["val"]] == list(range(8, 13))
    assert spec.classes["test"][0] == (13, "aircraft-class013")
    assert spec.images_per_class == {i: 10 + i % 3 for i in range(18)}
    assert spec.hierarchy == {"train": None, "val": None, "test": None}


def test_a_bilevel_spec_has_an_alphabet_per_node(pristine):
    spec = read_spec(pristine["omniglot"])
    assert spec.hierarchy["val"] == Hierarchy("bilevel", ((0, 1, 2), (3, 4)), ("Alphabet_03", "Alphabet_04"))
    assert spec.classes["val"][0] == (9, "Alphabet_03-character01")  # after the 9 train characters
    assert [i for i, _ in spec.classes["test"]] == list(range(14, 20))


def dag_spec() -> dict:
    """A hand-written HierarchicalDatasetSpecification: train r -> a, b; a -> l0, l1; b -> l1, c; c -> l2, l3
    (l1 under two parents, three levels); val v -> m0, m1; test t -> m2, m3. Nodes listed out of order."""

    def node(wn_id, children=(), parents=()):
        return {"wn_id": wn_id, "words": wn_id, "children_ids": list(children), "parents_ids": list(parents)}

    train = [node("r", "ab"), node("b", ["l1", "c"], "r"), node("a", ["l0", "l1"], "r"), node("c", ["l2", "l3"], "b"),
             node("l0", parents="a"), node("l1", parents="ab"), node("l2", parents="c"), node("l3", parents="c")]
    val = [node("v", ["m0", "m1"]), node("m0", parents="v"), node("m1", parents="v")]
    test = [node("t", ["m2", "m3"]), node("m3", parents="t"), node("m2", parents="t")]
    names = ["l0", "l1", "l2", "l3", "m0", "m1", "m2", "m3"]
    counts = {"TRAIN": {"l0": 3, "l1": 4, "l2": 5, "l3": 6, "a": 7, "b": 15, "c": 11, "r": 18},
              "VALID": {"m0": 2, "m1": 2, "v": 4}, "TEST": {"m2": 1, "m3": 2, "t": 3}}
    return {"name": "ilsvrc_2012", "split_subgraphs": {"TRAIN": train, "VALID": val, "TEST": test},
            "images_per_class": counts, "class_names": {str(i): n for i, n in enumerate(names)}, "path": "/elsewhere",
            "file_pattern": "{}.tfrecords", "__class__": "HierarchicalDatasetSpecification"}


def write_spec(folder, raw, classes=8):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_spec.json").write_text(json.dumps(raw))
    for i in range(classes):
        (folder / f"{i}.tfrecords").write_bytes(b"")


def test_a_dag_spec_has_a_node_per_wordnet_node_spanning_its_leaves(tmp_path):
    write_spec(tmp_path / "ilsvrc_2012", dag_spec())
    spec = read_spec(tmp_path / "ilsvrc_2012")
    assert spec.classes["train"] == ((0, "l0"), (1, "l1"), (2, "l2"), (3, "l3"))
    assert spec.classes["test"] == ((6, "m2"), (7, "m3"))
    assert spec.images_per_class == {0: 3, 1: 4, 2: 5, 3: 6, 4: 2, 5: 2, 6: 1, 7: 2}
    train = spec.hierarchy["train"]
    assert train.kind == "dag" and dict(zip(train.names, train.nodes)) == {
        "a": (0, 1), "b": (1, 2, 3), "c": (2, 3), "l0": (0,), "l1": (1,), "l2": (2,), "l3": (3,), "r": (0, 1, 2, 3)}
    assert dict(zip(spec.hierarchy["val"].names, spec.hierarchy["val"].nodes)) == {"m0": (0,), "m1": (1,), "v": (0, 1)}


def test_the_fixture_dag_shares_leaves_between_parents(pristine):
    train = read_spec(pristine["ilsvrc_2012"]).hierarchy["train"]
    spans = [set(n) for n in train.nodes if len(n) > 1]
    assert any(a & b for a in spans for b in spans if a != b and not a <= b and not b <= a)
    assert max(train.nodes, key=len) == tuple(range(8))  # the root spans every leaf


def flat_spec(train=2, val=1, test=1) -> dict:
    total = train + val + test
    return {"name": "mscoco", "classes_per_split": {"TRAIN": train, "VALID": val, "TEST": test},
            "images_per_class": {str(i): 2 for i in range(total)},
            "class_names": {str(i): f"c{i}" for i in range(total)},
            "path": "/elsewhere", "file_pattern": "{}.tfrecords", "__class__": "DatasetSpecification"}


BAD_SPECS = {
    "a missing key": (lambda raw: raw.pop("class_names"), "has no 'class_names'"),
    "an unknown kind": (lambda raw: raw.update(__class__="BenchmarkSpecification"), "__class__ is"),
    "sharded files": (lambda raw: raw.update(file_pattern="{}_{}.tfrecords"), "only '{}.tfrecords'"),
    "a class id missing": (lambda raw: raw["images_per_class"].pop("3"), "images_per_class has no entry 3"),
    "a count that is not one": (lambda raw: raw["images_per_class"].update({"0": -2}), "is not a count"),
    "example-level pools": (lambda raw: raw["images_per_class"].update({"0": {"train": 1, "test": 1}}), "pools"),
    "a split key missing": (lambda raw: raw["classes_per_split"].pop("VALID"), "has no 'VALID'"),
}


@pytest.mark.parametrize("kind", BAD_SPECS)
def test_a_bad_spec_is_one_line_naming_it(tmp_path, kind):
    change, what = BAD_SPECS[kind]
    raw = flat_spec()
    change(raw)
    write_spec(tmp_path, raw, classes=4)
    one_line(lambda: read_spec(tmp_path), str(tmp_path / "dataset_spec.json"), what,
             "re-run the Meta-Dataset conversion")


BAD_DAGS = {
    "a cycle": (lambda raw: raw["split_subgraphs"]["TRAIN"][3].update(children_ids=["l2", "l3", "r"]), "has a cycle"),
    "a link outside the split": (lambda raw: raw["split_subgraphs"]["VALID"][0]["children_ids"].append("zz"),
                                 "links to zz"),
    "a wn_id in two splits": (lambda raw: raw["split_subgraphs"]["TEST"].append(
        {"wn_id": "m0", "words": "", "children_ids": [], "parents_ids": []}),
        "repeats a wn_id of another split (e.g. m0)"),
    "leaves not the classes": (lambda raw: raw["class_names"].update({"1": "a"}),
                               "class_names 0..3 are not the leaves"),
}


@pytest.mark.parametrize("kind", BAD_DAGS)
def test_a_bad_dag_is_one_line_naming_it(tmp_path, kind):
    change, what = BAD_DAGS[kind]
    raw = dag_spec()
    change(raw)
    write_spec(tmp_path, raw)
    one_line(lambda: read_spec(tmp_path), str(tmp_path / "dataset_spec.json"), what)


def test_a_missing_or_unreadable_spec_is_one_line(tmp_path):
    one_line(lambda: read_spec(tmp_path), f"no {tmp_path / 'dataset_spec.json'}", "convert_datasets_to_records.py")
    (tmp_path / "dataset_spec.pkl").write_bytes(b"")
    one_line(lambda: read_spec(tmp_path), "only the older dataset_spec.pkl", "convert_from_pkl=True")
    (tmp_path / "dataset_spec.json").write_text("{not json")
    one_line(lambda: read_spec(tmp_path), f"cannot read {tmp_path / 'dataset_spec.json'}", "JSONDecodeError")


def test_a_spec_naming_a_missing_class_file_is_one_line(sources):
    (sources["aircraft"] / "11.tfrecords").unlink()
    (sources["aircraft"] / "12.tfrecords").unlink()
    one_line(lambda: read_spec(sources["aircraft"]), "names class 11 (aircraft-class011)",
             f"{sources['aircraft'] / '11.tfrecords'} does not exist and 1 more")


def test_an_empty_split_is_refused_when_asked_for(tmp_path):
    write_spec(tmp_path, flat_spec(train=0, val=2, test=2), classes=4)
    spec = read_spec(tmp_path, ("val", "test"))
    assert spec.classes["train"] == () and spec.hierarchy["train"] is None
    one_line(lambda: read_spec(tmp_path, ("train",)), "mscoco has no train classes (only val, test)",
             str(tmp_path / "dataset_spec.json"), "leave mscoco out of the train sources")
    one_line(lambda: source_store(tmp_path, spec, "train", SIZE, tmp_path / "cache"), "has no train classes")
    assert no_cache_left(tmp_path / "cache")


def test_a_split_decodes_to_the_written_pixels_in_spec_order(sources, tmp_path):
    folder = write_source(tmp_path, "vgg_flower", (3, 2, 2), [4, 5, 6, 4, 5, 6, 4], image_format="PNG", seed=3)
    spec = read_spec(folder)
    store = source_store(folder, spec, "val", SIZE, tmp_path / "cache")
    expected = np.concatenate([class_images(c, n, SIZE, seed=3) for c, n in ((3, 4), (4, 5))])
    assert torch.equal(store.images, torch.from_numpy(expected).permute(0, 3, 1, 2))  # PNG: lossless, same size
    assert store.offsets.tolist() == [0, 4, 9] and store.class_names == ("vgg_flower-class003", "vgg_flower-class004")


def test_grey_images_become_rgb_and_jpegs_resize(pristine, tmp_path):
    spec = read_spec(pristine["omniglot"])
    omniglot = source_store(pristine["omniglot"], spec, "test", 12, tmp_path / "cache")
    assert omniglot.images.shape == (sum(spec.images_per_class[i] for i in range(14, 20)), 3, 12, 12)
    assert (omniglot.images == omniglot.images[:, :1]).all()  # three equal channels
    folder = pristine["ilsvrc_2012"]
    ilsvrc = source_store(folder, read_spec(folder), "train", SIZE, tmp_path / "cache")
    counts = ilsvrc.counts.tolist()
    # JPEG (quality 75, chroma subsampled) blurs the pattern: each class's mean image is nearer its own than any other
    written = torch.stack([torch.from_numpy(class_images(c, n, SIZE)).float().mean(0) for c, n in enumerate(counts)])
    decoded = torch.stack([images.float().mean(0) for images in ilsvrc.images.split(counts)]).permute(0, 2, 3, 1)
    distances = torch.cdist(decoded.flatten(1), written.flatten(1)) / (SIZE * SIZE * 3) ** 0.5  # RMS per pixel
    assert distances.diagonal().max() < 40 and distances.add(torch.eye(len(counts)) * 1e9).min() > 80


def test_a_cache_is_built_once_then_memory_mapped_without_reading_a_source(sources, tmp_path):
    folder, cache = sources["aircraft"], tmp_path / "cache"
    spec = read_spec(folder)
    first = source_store(folder, spec, "train", SIZE, cache)
    (built,) = cache.iterdir()
    assert built.name.startswith("metadataset-aircraft-train-20px-") and built.suffix == ".store"
    for path in folder.glob("*.tfrecords"):  # garbage of the same size and time: only a read would notice
        stat = path.stat()
        path.write_bytes(bytes(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = source_store(folder, read_spec(folder), "train", SIZE, cache)
    assert torch.equal(again.images, first.images) and list(cache.iterdir()) == [built]


def test_the_default_cache_inside_the_source_is_found_again(sources):
    folder = sources["aircraft"]
    spec = read_spec(folder)
    source_store(folder, spec, "test", SIZE)
    source_store(folder, spec, "test", SIZE)
    assert len(list((folder / ".metarun-cache").iterdir())) == 1  # the cache does not change its own key


def test_a_replaced_class_file_gets_a_new_cache(sources, tmp_path):
    folder, cache = sources["aircraft"], tmp_path / "cache"
    spec = read_spec(folder)
    source_store(folder, spec, "val", SIZE, cache)
    path = folder / "8.tfrecords"
    write_tfrecord(path, [example(encode_image(image, "PNG"), 8) for image in class_images(99, 12, SIZE)])
    os.utime(path, ns=(1, 1))
    source_store(folder, spec, "val", SIZE, cache)
    assert len(list(cache.iterdir())) == 2


def rewrite(path, class_id, count, change=lambda payloads: payloads):
    payloads = [example(encode_image(image, "JPEG"), class_id) for image in class_images(class_id, count, SIZE)]
    path.write_bytes(b"".join(frame(p) for p in change(payloads)))


BAD_FILES = {
    "fewer records": (lambda p: rewrite(p, 9, 8), "holds 8 records where dataset_spec.json gives class 9"),
    "more records": (lambda p: rewrite(p, 9, 11), "holds more than 10 records"),
    "a wrong label": (lambda p: rewrite(p, 9, 10, lambda r: r[:4] + [example(b"x", 3)] + r[5:]),
                      "record 4 (counting from 0) is labelled 3 in the file of class 9"),
    "an image that does not decode": (
        lambda p: rewrite(p, 9, 10, lambda r: r[:6] + [example(b"not an image", 9)] + r[7:]),
        "record 6 (counting from 0) holds an image that does not decode"),
    "not an Example": (lambda p: rewrite(p, 9, 10, lambda r: r[:2] + [b"\x0a\x80"] + r[3:]),
                       "record 2 (counting from 0) is not a tf.train.Example"),
    "no label": (lambda p: rewrite(p, 9, 10, lambda r: r[:1] + [b""] + r[2:]),
                 "record 1 (counting from 0) has no single int64 'label'"),
    "a bad CRC": (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00"), "CRC of its data does not match"),
    "a truncated file": (lambda p: p.write_bytes(p.read_bytes()[:-3]), "the file is truncated"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_class_file_is_one_line_naming_it_and_leaves_no_cache(sources, tmp_path, kind):
    damage, what = BAD_FILES[kind]
    folder, cache = sources["aircraft"], tmp_path / "cache"
    damage(folder / "9.tfrecords")  # the second val class, with 10 images
    spec = read_spec(folder)
    one_line(lambda: source_store(folder, spec, "val", SIZE, cache), str(folder / "9.tfrecords"), what,
             "re-run the Meta-Dataset conversion")
    assert no_cache_left(cache)
    source_store(folder, spec, "train", SIZE, cache)  # the other splits' files are not this split's business
