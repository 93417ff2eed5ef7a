"""Batched on-device image augmentation, each a function ``(x, generator) -> x`` over a whole batch.

- ``random_crop_flip``: the standard miniImageNet training augmentation of the metric-learning line (e.g. Lee
  et al., 2019, MetaOptNet: ``RandomCrop(84, padding=8)`` + ``RandomHorizontalFlip``), with one gather instead
  of a Python loop per image. The MAML family trains without it, as in its papers (``dataset.augment: false``).
- ``random_affine``: small random affine distortions suited to handwriting (Koch, Zemel & Salakhutdinov, 2015,
  "Siamese Neural Networks for One-shot Image Recognition", section 3.3: rotation, shear, scale and translation
  per image), one sampling grid for the whole batch. A mirrored character may be another character, so it
  never flips.
"""

import math

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 8) -> torch.Tensor:
    """Crop each image at a random offset of its zero-padded copy and flip half of them left-right.

    Args:
        x: float images [..., C, H, W] (any leading batch dimensions), on the generator's device.
        generator: the only source of randomness, so a seeded generator gives the same output.
        padding: border of zeros added on every side before cropping back to H x W; the sampler augments
            normalised images, so there the border is the dataset's mean colour rather than black.

    Returns:
        A new tensor of the shape of ``x``.
    """
    if padding < 0:
        raise ValueError(f"random_crop_flip padding must be >= 0, got {padding}; pass e.g. padding=8")
    *lead, channels, height, width = x.shape
    images = x.reshape(-1, channels, height, width)
    batch, device = images.shape[0], images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    padded_width = width + 2 * padding
    top = torch.randint(0, 2 * padding + 1, (batch, 1, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch, 1, 1), generator=generator, device=device)
    flip = torch.rand((batch, 1, 1), generator=generator, device=device) < 0.5
    rows = top + torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    cols = left + torch.where(flip, width - 1 - cols, cols)
    # one flat index per output pixel, shared by all channels of an image
    index = (rows * padded_width + cols).view(batch, 1, height * width).expand(batch, channels, height * width)
    out = padded.flatten(2).gather(2, index)
    return out.view(*lead, channels, height, width)


def random_affine(x: torch.Tensor, generator: torch.Generator, rotation: float = 10.0, shear: float = 0.3,
                  scale=(0.8, 1.2), translate: float = 0.02) -> torch.Tensor:
    """Distort each image by its own random affine map, with bilinear interpolation and zeros outside.

    Args:
        x: float images [..., C, H, W] (any leading batch dimensions), on the generator's device; zeros are the
            background (Omniglot's ink-is-1 images).
        generator: the only source of randomness, so a seeded generator gives the same output.
        rotation: largest rotation, in degrees either way.
        shear: largest shear factor along each axis, either way.
        scale: (smallest, largest) scale along each axis, drawn apart.
        translate: largest shift along each axis, as a fraction of the side.

    Returns:
        A new tensor of the shape of ``x``.
    """
    check_affine(rotation, shear, scale, translate)
    low, high = scale
    *lead, channels, height, width = x.shape
    images = x.reshape(-1, channels, height, width)
    uniform = torch.rand(images.shape[0], 7, generator=generator, device=images.device) * 2 - 1  # U[-1, 1]
    angle = uniform[:, 0] * math.radians(rotation)
    shear_x, shear_y = uniform[:, 1] * shear, uniform[:, 2] * shear
    scale_x, scale_y = ((uniform[:, 3:5] + 1) / 2 * (high - low) + low).unbind(1)
    cos, sin = angle.cos(), angle.sin()
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(-1, 2, 2)
    skew = torch.stack([torch.ones_like(cos), shear_x, shear_y, torch.ones_like(cos)], 1).view(-1, 2, 2)
    stretch = torch.diag_embed(torch.stack([scale_x, scale_y], 1))
    # affine_grid maps output to input coordinates in [-1, 1], where a shift of 2 * translate is ``translate`` sides
    theta = torch.cat([rotate @ skew @ stretch, (uniform[:, 5:7] * 2 * translate).unsqueeze(-1)], 2)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(*lead, channels, height, width)


# (least, most, why): where a distortion stops varying a character and starts destroying it
AFFINE_BOUNDS = {
    "shear": (0.0, 0.5, "a shear of 1 flattens a character to a line, and past 0.5 the shear alone changes its "
                        "area by over a quarter"),
    "scale": (0.5, 2.0, "the character would shrink below half its size, or grow past twice it and off the image"),
    "translate": (0.0, 0.25, "a shift past a quarter of the side takes the character's centre out of the middle "
                             "half of the image, and past half of it off the image"),
}
ROTATION_BOUNDS = {False: (0.0, 180.0, "a range past 180 degrees wraps around"),
                   True: (0.0, 45.0, "with dataset.rotations a character turned by 90 degrees is another class, and "
                                     "past 45 degrees a turned character looks more like that class than its own")}


def check_affine(rotation: float, shear: float, scale, translate: float, rotation_classes: bool = False) -> None:
    """Raise ValueError, naming the ``dataset.affine`` key and its bound, unless the ranges of ``random_affine``
    keep a character recognisable (``rotation_classes``: its 90-degree turns are other classes)."""
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ValueError(f"dataset.affine.scale={list(scale)} is not [low, high] with 0 < low <= high; set e.g. "
                         "dataset.affine.scale=[0.8,1.2]")
    bounds = {"rotation": ROTATION_BOUNDS[rotation_classes], **AFFINE_BOUNDS}
    values = {"rotation": rotation, "shear": shear, "scale": list(scale), "translate": translate}
    for key, (least, most, why) in bounds.items():
        if not all(least <= value <= most for value in (values[key] if key == "scale" else [values[key]])):
            raise ValueError(f"dataset.affine.{key}={values[key]} is outside [{least:g}, {most:g}]: {why}; keep it in "
                             "that range (Koch et al.'s, the defaults: rotation 10, shear 0.3, scale [0.8, 1.2], "
                             "translate 0.02)")
