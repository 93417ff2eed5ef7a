"""Omniglot with maps of the pen's trajectory behind every meta-training image, for stroke_algo.py's auxiliary loss;
a dataset defined outside metarun (``dataset._target_=stroke_data.DATASET``) on metarun's own Omniglot.

Each drawing of ``dataset.strokes.files`` (the background set's strokes, which Omniglot's challenge allows for
learning) becomes ``CHANNELS`` maps the size of its image, one cell per pixel: where its strokes start and where
they end (a count), the pen's net movement across the cell (x and y, in pixels), and the stroke order (each stroke's
place in the drawing, 0 to 1, times its length in the cell). They follow the image store row for row, rotations and
mirrors included, and are scaled so that each channel, averaged over 4x4 pixels, has unit standard deviation.

The meta-training sampler stacks a batch's maps on its images as extra channels before the affine augmentation, so
a distortion moves the maps with the ink; validation and meta-test images keep their one channel. The images are
never re-drawn from the strokes: ``dataset.strokes.fraction`` and the perturbation ranges have no effect here.
"""

import torch
import torch.nn.functional as F

from metarun.config.datasets import OmniglotConfig
from metarun.data import Dataset, omniglot
from metarun.data.sampling.strokes import segments_of

CHANNELS = 5  # starts, ends, movement x, movement y, order
POOL = 4  # the unit of the maps' scale: the cell of Conv-4's second block at any image size


def stroke_maps(points: torch.Tensor, strokes: torch.Tensor, size: int) -> torch.Tensor:
    """[R, CHANNELS, size, size] maps of the drawings in a ``StrokeTable``'s ``points`` [R, P, 2] and ``strokes``
    [R, P], unscaled."""
    rows, cells = points.shape[0], size * size
    maps = torch.zeros(CHANNELS, rows * cells)

    def cell_of(row: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        column_row = (at * size).long().clamp(0, size - 1)
        return row * cells + column_row[:, 1] * size + column_row[:, 0]

    row, index = segments_of(strokes).nonzero(as_tuple=True)
    start, end = points[row, index], points[row, index + 1]
    cell, move = cell_of(row, (start + end) / 2), (end - start) * size
    count = strokes.max(1).values.clamp(min=0) + 1
    order = (strokes[row, index] + 0.5) / count[row]
    maps[2].index_add_(0, cell, move[:, 0])
    maps[3].index_add_(0, cell, move[:, 1])
    maps[4].index_add_(0, cell, order * move.norm(dim=1))
    drawn = strokes >= 0
    edge = torch.full_like(strokes[:, :1], -2)
    before, after = torch.cat([edge, strokes[:, :-1]], 1), torch.cat([strokes[:, 1:], edge], 1)
    for channel, ends in ((0, drawn & (before != strokes)), (1, drawn & (after != strokes))):
        row, index = ends.nonzero(as_tuple=True)
        maps[channel].index_add_(0, cell_of(row, points[row, index]), torch.ones(len(row)))
    return maps.view(CHANNELS, rows, size, size).transpose(0, 1).contiguous()


def scaled(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` with each channel divided by the standard deviation of its ``POOL`` x ``POOL`` means."""
    spread = F.avg_pool2d(maps, POOL).std(dim=(0, 2, 3)).clamp(min=1e-6)
    return maps / spread.view(1, -1, 1, 1)


class WithMaps:
    """The train sampler's two hooks: ``redraw`` (given each batch part's store rows, before normalisation) notes
    the rows and keeps the pixels; ``augment`` then distorts the images with their rows' maps as extra channels."""

    def __init__(self, maps: torch.Tensor, augment):
        self.maps, self.augment, self.rows = maps, augment, None

    def redraw(self, pixels: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.rows = rows
        return pixels

    def distort(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.augment(torch.cat([x, self.maps[self.rows].to(x.dtype)], 1), generator)


def build(settings, device: torch.device):
    """Omniglot's task source (``metarun.data.omniglot``), its meta-training batches carrying the stroke maps."""
    if not settings.strokes.files:
        raise ValueError("stroke_data.DATASET draws its maps from the pen strokes; set "
                         "dataset.strokes.files=[strokes_background_small1.zip] (the strokes of dataset.train)")
    if not settings.augment:
        raise ValueError("stroke_data.DATASET stacks its maps on the images in the training augmentation; set "
                         "dataset.augment=true")
    source = omniglot.build(settings, device)
    sampler = source.samplers["train"]
    table = sampler.redraw.table  # omniglot.build's re-drawing holds the strokes of every training row
    hooks = WithMaps(scaled(stroke_maps(table.points.cpu(), table.strokes.cpu(), settings.image_size)).to(device),
                     sampler.augment)
    sampler.redraw, sampler.augment = hooks.redraw, hooks.distort
    return source


DATASET = Dataset(build, OmniglotConfig)
