"""Batched random crop + flip: shapes, determinism, and that each part does what it says."""

import pytest
import torch
import torch.nn.functional as F

from metarun.data.augment import random_crop_flip


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(*shape) -> torch.Tensor:
    return torch.rand(*shape, generator=seeded(123))


def reference(image: torch.Tensor, top: int, left: int, flip: bool, padding: int) -> torch.Tensor:
    """The plain per-image crop (and flip) of a zero-padded copy."""
    height, width = image.shape[-2:]
    crop = F.pad(image, (padding,) * 4)[:, top : top + height, left : left + width]
    return crop.flip(-1) if flip else crop


def test_shape_and_dtype_kept_with_leading_dimensions():
    x = images(3, 4, 3, 12, 10)
    out = random_crop_flip(x, seeded(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_seeded_generator_gives_the_same_output():
    x = images(16, 3, 12, 12)
    assert torch.equal(random_crop_flip(x, seeded(7)), random_crop_flip(x, seeded(7)))
    assert not torch.equal(random_crop_flip(x, seeded(7)), random_crop_flip(x, seeded(8)))


def test_no_padding_only_flips_each_image_or_leaves_it():
    x = images(64, 3, 9, 11)
    out = random_crop_flip(x, seeded(1), padding=0)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 0 < int(flipped.sum()) < len(x)


def test_matches_a_per_image_crop_and_flip_at_some_offsets():
    padding, x = 3, images(200, 2, 8, 8)
    out = random_crop_flip(x, seeded(2), padding=padding)
    offsets = range(2 * padding + 1)
    shifted = 0
    for o, i in zip(out, x):
        matches = [(t, l, f) for t in offsets for l in offsets for f in (False, True)
                   if torch.equal(o, reference(i, t, l, f, padding))]
        assert matches, "every output is a crop of the padded image, flipped or not"
        shifted += (padding, padding) != matches[0][:2]
    assert shifted > len(x) // 2, "most crops move the content"


def test_negative_padding_is_rejected():
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(images(1, 1, 4, 4), seeded(0), padding=-1)
