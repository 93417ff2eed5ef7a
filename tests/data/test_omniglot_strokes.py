"""Omniglot's training images re-drawn from their pen strokes (dataset.strokes) and the support copies of
evaluation episodes (eval.support_copies), on the real subsets."""

import pytest
import torch

from metarun.data.omniglot import build
from metarun.utils.errors import RunError
from tests.conftest import TINY, run_cli

CPU = torch.device("cpu")
STROKES = "strokes_background_small1.zip"
UNCHANGED = dict(rotation=0.0, scale=[1.0, 1.0], shear=0.0, translate=0.0, jitter=0.0, width=[0.049, 0.049], drop=0.0,
                 split=0.0)


@pytest.fixture
def strokes_cfg(omniglot_cfg, folders_cfg, omniglot_dir):
    """``strokes_cfg(**strokes)``: the folders split with rotations and mirrors, re-drawn from small1's strokes."""
    if not (omniglot_dir / STROKES).exists():
        pytest.skip(f"{STROKES} is not in {omniglot_dir}")

    def make(**strokes):
        return omniglot_cfg(**folders_cfg, rotations=True, mirrors=True, strokes={"files": [STROKES], **strokes})

    return make


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of the ink (above half) of image batches [B, 1, H, W], per image."""
    a, b = a > 0.5, b > 0.5
    return (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp(min=1)


def test_every_row_of_the_extended_store_is_redrawn_from_its_own_drawing(strokes_cfg):
    train = build(strokes_cfg(fraction=1.0, **UNCHANGED), CPU).samplers["train"]
    assert train.store.num_classes == 8 * 136  # small1's characters, turned and mirrored
    rows = torch.randperm(len(train.store.images), generator=torch.Generator().manual_seed(0))[:400]
    stored = train.gather(rows).float() / 255
    drawn = train.redraw(stored * 255, rows, torch.Generator().manual_seed(0)) / 255
    # each class's 20 rows are its 20 drawers: the next drawer's image is the same character drawn by another
    other = train.gather(torch.where(rows % 20 == 19, rows - 1, rows + 1)).float() / 255
    own, others = iou(drawn, stored), iou(drawn, other)
    assert own.mean() > 0.6 and (own > others).float().mean() > 0.9, (own.mean(), others.mean())


def test_a_share_of_meta_training_images_is_redrawn_and_evaluation_is_not(strokes_cfg, omniglot_cfg, folders_cfg):
    plain = build(omniglot_cfg(**folders_cfg, rotations=True, mirrors=True), CPU)
    none, every = (build(strokes_cfg(fraction=share), CPU) for share in (0.0, 1.0))
    batches = [tasks.sample(4, torch.Generator().manual_seed(1)) for tasks in (plain, none, every)]
    assert torch.equal(batches[0].support_x, batches[1].support_x)  # fraction 0 draws, but keeps every pixel
    changed = (batches[2].query_x != batches[0].query_x).flatten(2).any(2)
    assert changed.all() and batches[2].query_x.min() >= 0 and batches[2].query_x.max() <= 1
    assert all(every.samplers[split].redraw is None for split in ("val", "test"))
    assert torch.equal(every.episodes("test", 0, 0, 2).query_x, plain.episodes("test", 0, 0, 2).query_x)


def test_bad_stroke_settings_and_files_are_refused_naming_the_key(strokes_cfg, omniglot_cfg, folders_cfg):
    with pytest.raises(ValueError, match=r"dataset\.strokes\.fraction=1\.5 is outside \[0, 1\]"):
        build(strokes_cfg(fraction=1.5), CPU)
    with pytest.raises(FileNotFoundError, match=r"dataset\.strokes\.files names missing\.zip, which is not in"):
        build(omniglot_cfg(**folders_cfg, strokes={"files": ["missing.zip"]}), CPU)
    # small2's training characters have no strokes here: named, with the fix
    other = dict(folders_cfg, train=["images_background_small2.zip"], val=[], val_alphabets=1,
                 test=["images_background_small1.zip"])
    with pytest.raises(RunError, match=r"the strokes have 0 drawings of Japanese_\(katakana\)/character01 where its images have 20"):
        build(omniglot_cfg(**other, strokes={"files": [STROKES]}), CPU)


def test_support_copies_follow_each_support_image_class_by_class(omniglot_cfg, folders_cfg):
    tasks = build(omniglot_cfg(**folders_cfg, augment=True), CPU)
    plain = tasks.episodes("test", 0, 3, 2, ways=5, shots=2, queries=1)
    copied = tasks.episodes("test", 0, 3, 2, ways=5, shots=2, queries=1, support_copies=3)
    assert copied.support_x.shape == (2, 5 * 2 * 4, 1, 28, 28)
    assert copied.support_y[0].tolist() == [label for label in range(5) for _ in range(2 * 4)]
    groups = copied.support_x.view(2, 10, 4, 1, 28, 28)
    assert torch.equal(groups[:, :, 0], plain.support_x.view(2, 10, 1, 28, 28))  # the image, then its copies
    assert not torch.equal(groups[:, :, 1], groups[:, :, 0])
    assert torch.equal(copied.query_x, plain.query_x)
    again = tasks.episodes("test", 0, 4, 1, ways=5, shots=2, queries=1, support_copies=3)
    assert torch.equal(again.support_x[0], copied.support_x[1])  # part of the fixed episode


def test_support_copies_without_an_augmentation_are_one_line(tmp_path):
    out = run_cli("algo=protonet", "dataset=sinusoid", *TINY, "eval.support_copies=2", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "metarun: error: eval.support_copies=2 distorts support images with the dataset's training augmentation, and "
        "dataset=sinusoid has none here; set dataset.augment=true (where the dataset has it) or eval.support_copies=0")
