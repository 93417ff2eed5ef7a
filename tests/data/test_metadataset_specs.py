"""The official dataset specs of ILSVRC-2012 and Omniglot (tests/fixtures/metadataset_specs, Apache 2.0): metarun
parses them, and Meta-Dataset's sampler draws episodes from the real WordNet DAG and alphabets as the paper does."""

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from metarun.config.datasets import VariableEpisodesConfig
from metarun.data.files.metadataset_files import SPEC_FILE, read_spec
from metarun.data.sampling.variable_episodes import MAX_SPANNING_LEAVES_ELIGIBLE, VariableEpisodes
from metarun.data.tasks import PAD

SPECS = Path(__file__).resolve().parents[1] / "fixtures" / "metadataset_specs"


def official_spec(name: str, folder: Path) -> Path:
    """``folder`` holding the source's official spec."""
    folder.mkdir()
    with gzip.open(SPECS / f"{name}_dataset_spec.json.gz") as packed, open(folder / SPEC_FILE, "wb") as spec:
        shutil.copyfileobj(packed, spec)
    return folder


def with_class_files(folder: Path, count: int):
    """The spec of ``folder`` read beside an empty file per class (the parser checks they exist)."""
    for class_id in range(count):
        (folder / f"{class_id}.tfrecords").touch()
    return read_spec(folder, ("train", "val", "test"))


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    return with_class_files(official_spec("ilsvrc_2012", tmp_path_factory.mktemp("specs") / "ilsvrc_2012"), 1000)


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    return with_class_files(official_spec("omniglot", tmp_path_factory.mktemp("specs") / "omniglot"), 1623)


def split_sampler(spec, split: str) -> tuple:
    counts = torch.tensor([spec.images_per_class[class_id] for class_id, _ in spec.classes[split]])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return VariableEpisodes(counts, offsets, spec.hierarchy[split], VariableEpisodesConfig()), offsets


def episode_classes(rows: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor) -> set:
    real = rows[labels != PAD]
    return set((torch.searchsorted(offsets, real, right=True) - 1).tolist())


def test_the_ilsvrc_spec_gives_the_paper_s_splits_and_its_wordnet_dag(ilsvrc):
    assert [len(ilsvrc.classes[split]) for split in ("train", "val", "test")] == [712, 158, 130]
    assert sum(ilsvrc.images_per_class.values()) == 1_280_764  # the images the official spec counts
    dag = ilsvrc.hierarchy["train"]
    assert dag.kind == "dag" and max(len(node) for node in dag.nodes) == 712  # the root spans every leaf


def test_ilsvrc_episodes_are_the_leaves_under_one_eligible_node(ilsvrc):
    sampler, offsets = split_sampler(ilsvrc, "train")
    eligible = [set(node) for node in ilsvrc.hierarchy["train"].nodes if 5 <= len(node) <= MAX_SPANNING_LEAVES_ELIGIBLE]
    assert eligible and all(len(node) < 712 for node in eligible)  # the root spans too many to be drawn
    support_rows, support_labels, query_rows, query_labels = sampler.draw(200, torch.Generator().manual_seed(0))
    for t in range(200):
        classes = episode_classes(support_rows[t], support_labels[t], offsets)
        assert classes == episode_classes(query_rows[t], query_labels[t], offsets)
        assert 5 <= len(classes) <= 50 and any(classes <= node for node in eligible), sorted(classes)
        # every leaf of a node with at most 50 leaves is drawn: a node's classes are its leaves, capped at 50
        assert any(classes == node or len(node) > 50 and len(classes) == 50 for node in eligible if classes <= node)


def test_omniglot_episodes_come_from_one_of_its_real_alphabets(omniglot):
    alphabets = omniglot.hierarchy["train"]
    assert len(alphabets.nodes) == 25 and sum(len(node) for node in alphabets.nodes) == 883
    assert min(len(node) for node in alphabets.nodes) >= 5  # every alphabet can fill a 5-way episode
    sampler, offsets = split_sampler(omniglot, "train")
    support_rows, support_labels, _, _ = sampler.draw(200, torch.Generator().manual_seed(0))
    nodes = [set(node) for node in alphabets.nodes]
    for t in range(200):
        classes = episode_classes(support_rows[t], support_labels[t], offsets)
        assert sum(classes <= node for node in nodes) == 1
