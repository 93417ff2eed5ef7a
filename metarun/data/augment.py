"""Batched on-device image augmentation: random crop with zero padding and horizontal flip.

The standard miniImageNet training augmentation of the metric-learning line (e.g. Lee et al., 2019,
MetaOptNet: ``RandomCrop(84, padding=8)`` + ``RandomHorizontalFlip``), done for a whole batch with one
gather instead of a Python loop per image. The MAML family trains without it, as in its papers
(``dataset.augment: false``).
"""

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
