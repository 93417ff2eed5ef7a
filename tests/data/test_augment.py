"""Batched augmentation (crop + flip, affine maps): shapes, determinism, and that each does what it says."""

import re

import pytest
import torch
import torch.nn.functional as F

from metarun.data.sampling.augment import check_affine, random_affine, random_crop_flip


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


def test_affine_is_deterministic_for_a_seed_and_keeps_shape_and_device():
    x = images(2, 5, 1, 20, 20)
    out = random_affine(x, seeded(3))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(out, random_affine(x, seeded(3)))
    assert not torch.equal(out, random_affine(x, seeded(4)))
    differs = (out - x).abs().flatten(2).amax(-1) > 0.05
    assert bool(differs.all()), "every image is distorted, each its own way"


def test_affine_with_empty_ranges_is_the_identity():
    x = images(6, 1, 15, 15)
    out = random_affine(x, seeded(0), rotation=0.0, shear=0.0, scale=(1.0, 1.0), translate=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_affine_moves_a_stroke_by_at_most_its_ranges():
    # a one-pixel dot at the centre of 105x105 lands within the translation range, without rotation or scaling
    x = torch.zeros(400, 1, 105, 105)
    x[:, 0, 52, 52] = 1.0
    out = random_affine(x, seeded(5), rotation=0.0, shear=0.0, scale=(1.0, 1.0), translate=0.05)
    grid = torch.arange(105.0)
    mass = out.sum((-1, -2)).squeeze(1)
    centre_y = (out.sum(-1).squeeze(1) * grid).sum(-1) / mass
    centre_x = (out.sum(-2).squeeze(1) * grid).sum(-1) / mass
    shift = torch.stack([centre_x, centre_y], 1) - 52
    assert bool((shift.abs() <= 0.05 * 105 + 0.5).all()) and shift.abs().max() > 0.8 * 0.05 * 105
    # rotations alone keep a centred dot in place and turn an off-centre one by at most the angle
    x = torch.zeros(400, 1, 105, 105)
    x[:, 0, 52, 92] = 1.0  # 40 px right of the centre
    out = random_affine(x, seeded(6), rotation=10.0, shear=0.0, scale=(1.0, 1.0), translate=0.0)
    angle = torch.atan2((out.sum(-1).squeeze(1) * grid).sum(-1) / out.sum((-1, -2)).squeeze(1) - 52,
                        (out.sum(-2).squeeze(1) * grid).sum(-1) / out.sum((-1, -2)).squeeze(1) - 52).rad2deg()
    assert bool((angle.abs() <= 10.5).all()) and angle.abs().max() > 8


@pytest.mark.parametrize("bad", [dict(rotation=-1.0), dict(scale=(1.2, 0.8)), dict(scale=(0.0, 1.0)), dict(translate=-0.1)])
def test_affine_rejects_impossible_ranges_naming_the_key(bad):
    with pytest.raises(ValueError, match="dataset.affine"):
        random_affine(images(1, 1, 4, 4), seeded(0), **bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_affine_runs_on_the_gpu_and_is_deterministic_there():
    x = images(64, 1, 28, 28).cuda()
    generator = torch.Generator(device="cuda")
    first = random_affine(x, generator.manual_seed(1))
    assert first.device.type == "cuda" and torch.equal(first, random_affine(x, generator.manual_seed(1)))


@pytest.mark.parametrize("key, value, bound", [
    ("translate", 0.6, r"\[0, 0.25\]: a shift past a quarter of the side takes the character's centre out"),
    ("shear", 1.0, r"\[0, 0.5\]: a shear of 1 flattens a character to a line"),
    ("scale", [0.2, 1.0], r"\[0.5, 2\]: the character would shrink below half its size"),
    ("scale", [1.0, 3.0], r"\[0.5, 2\]"),
    ("rotation", 200.0, r"\[0, 180\]: a range past 180 degrees wraps around"),
    ("rotation", -5.0, r"\[0, 180\]"),
])
def test_affine_ranges_that_destroy_a_character_are_refused_naming_the_key_and_the_bound(key, value, bound):
    ranges = {"rotation": 10.0, "shear": 0.3, "scale": [0.8, 1.2], "translate": 0.02, key: value}
    shown = re.escape(str(value))
    with pytest.raises(ValueError, match=f"^dataset.affine.{key}={shown} is outside {bound}"):
        check_affine(**ranges)


def test_the_bounds_themselves_and_the_defaults_pass():
    check_affine(rotation=10.0, shear=0.3, scale=[0.8, 1.2], translate=0.02)
    check_affine(rotation=180.0, shear=0.5, scale=[0.5, 2.0], translate=0.25)
    check_affine(rotation=45.0, shear=0.0, scale=[1.0, 1.0], translate=0.0, rotation_classes=True)
    with pytest.raises(ValueError, match=r"rotation=46.0 is outside \[0, 45\]"):
        check_affine(rotation=46.0, shear=0.0, scale=[1.0, 1.0], translate=0.0, rotation_classes=True)
