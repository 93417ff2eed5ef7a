"""Omniglot's pen strokes (Lake, Salakhutdinov & Tenenbaum, 2015, "Human-level concept learning through
probabilistic program induction", Science) as data: the trajectories behind the images, held in a tensor table
aligned with an ImageStore's rows, rendered on the device, and re-drawn with stroke-level augmentation.

Files: the official ``strokes_background.zip`` (or a subset such as ``strokes_background_small1.zip``, or an
extracted folder), ``<Alphabet>/<character>/<id>_<drawer>.txt``: ``START``, then one ``x,y,t`` line per pen
sample (t in milliseconds), ``BREAK`` after each stroke (pen up). x and y are in the 105x105 image's pixels with
y pointing up; Lake's demo draws a sample at pixel (column x, row -y), so ``FRAME`` maps it to x right, y down,
both in [0, 1] of the image's side, where rendering at any size is a scale. Each stroke is resampled to points a
uniform arc length apart (a single sample stays a dot).

Omniglot's one-shot challenge allows the background set's strokes for learning; the evaluation set's strokes
are not for training. The table follows ``omniglot.with_rotations`` and ``omniglot.with_mirrors`` row for row, so
the sampler can re-draw any row of the image store instead of distorting its pixels.
"""

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from metarun.config.datasets import StrokesConfig
from metarun.data.files.imagefiles import inside
from metarun.data.files.store import ImageStore
from metarun.utils.errors import RunError

SIDE = 105  # the official images' side, the unit of the files' coordinates
FRAME = 0.5  # a file's sample (x, y) lies at (x + FRAME, -y + FRAME) pixels from the image's top-left corner
SPACING = 0.01  # resampled points this far apart (about one pixel of the 105-px image, the files' own resolution)
PEN_WIDTH = 0.049  # of the side (5.1 px at 105): the official images' pen, measured in ``render``
JITTER_KNOTS = 4  # random offsets per stroke, interpolated along it
GAP_PIXELS = 2.0  # a split leaves this many output pixels of background between the two pieces' ink


def read_strokes(path: Path, spacing: float = SPACING) -> dict:
    """Every drawing of a folder or zip of ``<Alphabet>/<character>/<id>_<drawer>.txt``, resampled.

    One folder wrapped around that layout (``strokes_background/<Alphabet>/...``) is looked through, as
    ``omniglot.read_set`` does for images; hidden files and macOS's ``__MACOSX/`` stubs are skipped.

    Returns:
        {"<Alphabet>/<character>": [drawing, ...]}: classes sorted by name (an image store's order), drawings
        sorted by file name (row i of a class in the store is drawer i's); a drawing is a list of strokes, each
        float32 [n, 2] in the image frame (x right, y down, in [0, 1] of the side).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunError: a file that is not a drawing (named, with its line), or no drawings in class folders.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; put the strokes folder or zip there or correct the path")
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*.txt") if p.is_file()}
        texts = {name: file.read_text for name, file in files.items() if _is_drawing(name)}
        return _read_tree(path, texts, spacing)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in inside(path, archive.namelist()) if _is_drawing(n)]
            return _read_tree(path, {n: lambda n=n: archive.read(n).decode() for n in names}, spacing)
    except zipfile.BadZipFile as err:
        raise RunError(f"{path} is not a readable zip ({err}); download it again or give its extracted folder") from err


def _is_drawing(name: str) -> bool:
    """A drawing file by its suffix, outside hidden folders (macOS zips carry ``__MACOSX/._x.txt`` stubs)."""
    parts = PurePosixPath(name).parts
    return name.endswith(".txt") and not any(p.startswith((".", "__MACOSX")) for p in parts)


def _read_tree(root: Path, texts: dict, spacing: float) -> dict:
    """{class: drawings} of ``texts`` ({relative name: () -> file text}), classes at depth two under one wrapper."""
    parts = {name: name.split("/") for name in texts}
    while parts and all(len(p) > 3 for p in parts.values()) and len({p[0] for p in parts.values()}) == 1:
        parts = {name: p[1:] for name, p in parts.items()}
    odd = next((name for name in sorted(parts) if len(parts[name]) != 3), None)
    if odd is not None or not parts:
        found = f"the drawing {odd}" if odd else "no .txt drawings"
        raise RunError(f"{root} has {found} outside <Alphabet>/<character>/<drawing>.txt; give the folder or zip "
                       "whose top-level folders are the alphabets")
    # sorted as ``read_images`` sorts images: by the class's path as a string, then by file name
    classes = {name: "/".join(p[:2]) for name, p in parts.items()}
    drawings = {}
    for name in sorted(parts, key=lambda n: (classes[n], parts[n][2])):
        drawings.setdefault(classes[name], []).append(parse_drawing(texts[name](), f"{root}/{name}", spacing))
    return drawings


def parse_drawing(text: str, source: str, spacing: float = SPACING) -> list:
    """The strokes of one drawing file's ``text`` (``source`` names it in errors), resampled ``spacing`` apart."""
    strokes = []
    for block in PEN_UP.split(text):  # the samples between two pen-ups are one stroke
        lines = [line.split(",") for line in block.splitlines() if line.strip()]
        if lines:
            strokes.append(resample((_samples(lines, text, source) * [1, -1] + FRAME) / SIDE, spacing))
    if not strokes:
        raise RunError(f"{source} has no pen samples (no 'x,y,t' lines); replace or remove that file")
    return strokes


PEN_UP = re.compile(r"^[ \t]*(?:START|BREAK)[ \t]*\r?$", re.MULTILINE)


def _samples(lines: list, text: str, source: str) -> np.ndarray:
    """float64 [n, 2]: the (x, y) of one stroke's ``lines``, each split at its commas; a line of ``text`` that is
    not three finite numbers is a RunError naming ``source``, the line and its number."""
    try:
        samples = np.array(lines, dtype=np.float64)  # a line of another length makes the array ragged: ValueError
    except ValueError:
        samples = None
    if samples is None or samples.shape[1] != 3 or not np.isfinite(samples).all():
        raise RunError(f"{source} {_malformed(text)}, not 'x,y,t', START or BREAK; replace or remove that file")
    return samples[:, :2]


def _malformed(text: str) -> str:
    """Where ``text`` first holds a line that is neither a pen-up nor three finite numbers, and that line."""
    for number, line in enumerate(text.splitlines(), 1):
        values = line.strip().split(",")
        if line.strip() not in ("START", "BREAK", "") and not (len(values) == 3 and all(_finite(v) for v in values)):
            return f"line {number} is {line.strip()[:40]!r}"
    return "has a malformed line"


def _finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def resample(samples: np.ndarray, spacing: float) -> np.ndarray:
    """Points a uniform arc length of about ``spacing`` apart along the polyline ``samples`` [n, 2], its ends kept;
    a stroke of one sample (or of samples all in one place) stays one point, a dot."""
    steps = np.hypot(*np.diff(samples, axis=0).T)
    moving = np.concatenate([[True], steps > 0])  # a repeated sample would make the arc length stand still
    samples, arc = samples[moving], np.concatenate([[0.0], np.cumsum(steps[steps > 0])])
    if len(samples) == 1:
        return samples.astype(np.float32)
    count = max(1, round(arc[-1] / spacing))
    along = np.arange(count + 1) * (arc[-1] / count)
    return np.stack([np.interp(along, arc, samples[:, 0]), np.interp(along, arc, samples[:, 1])], 1).astype(np.float32)


@dataclass(frozen=True)
class StrokeTable:
    """The drawings of an image store's rows as padded point tensors, row for row.

    Attributes:
        points: float32 [R, P, 2], x right and y down in [0, 1] of the side; a dot is its point twice, so that
            every stroke is a run of segments; padding repeats nothing and belongs to no stroke.
        strokes: int64 [R, P], the stroke of each point within its drawing (0, 1, ...), -1 for padding.
        offsets: int64 [num_classes + 1] on the CPU, class c owns rows ``offsets[c] : offsets[c + 1]`` (as in its
            store).
        class_names: one name per class, the store's.
    """

    points: torch.Tensor
    strokes: torch.Tensor
    offsets: torch.Tensor
    class_names: tuple

    @staticmethod
    def build(drawings: dict, store: ImageStore) -> "StrokeTable":
        """The table of ``read_strokes``' ``drawings`` for the rows of ``store``, refused unless every class of the
        store has one drawing per image, in its order."""
        counts = store.counts.tolist()
        for index, name in enumerate(store.class_names):
            found = len(drawings.get(name, ()))
            if found != counts[index]:
                raise RunError(f"the strokes have {found} drawings of {name} where its images have {counts[index]}; "
                               "read the strokes of the same set as the images (strokes_background for "
                               "images_background)")
        if len(drawings) != store.num_classes or tuple(drawings) != store.class_names:
            extra = next((name for name in drawings if name not in store.class_names), None)
            raise RunError(f"the strokes have class {extra} in another order or beyond the images' classes; read the "
                           "strokes of the same set as the images, unsplit")
        rows = [[np.repeat(s, 2 if len(s) == 1 else 1, axis=0) for s in drawing] for name in store.class_names
                for drawing in drawings[name]]
        sizes = [sum(len(s) for s in row) for row in rows]
        points = np.zeros((len(rows), max(sizes, default=2), 2), dtype=np.float32)
        strokes = np.full(points.shape[:2], -1, dtype=np.int64)
        for index, (row, size) in enumerate(zip(rows, sizes)):
            points[index, :size] = np.concatenate(row)
            strokes[index, :size] = np.repeat(np.arange(len(row)), [len(s) for s in row])
        return StrokeTable(torch.from_numpy(points), torch.from_numpy(strokes), store.offsets.clone(),
                           store.class_names)

    @property
    def segments(self) -> torch.Tensor:
        """bool [R, P - 1]: whether points p and p + 1 are one stroke's (the pen draws between them)."""
        return segments_of(self.strokes)

    def to(self, device: torch.device) -> "StrokeTable":
        """The same table with its tensors on ``device``."""
        return StrokeTable(self.points.to(device), self.strokes.to(device), self.offsets, self.class_names)

    def select(self, classes: list) -> "StrokeTable":
        """A table of the classes at indices ``classes``, in that order (``ImageStore.select``'s rows)."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        counts = (self.offsets[1:] - self.offsets[:-1])[classes]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        # row i of the result is row i of its class's run in the table, shifted to that run's start
        rows = torch.arange(int(offsets[-1])) + torch.repeat_interleave(self.offsets[classes] - offsets[:-1], counts)
        rows = rows.to(self.points.device)
        names = tuple(self.class_names[c] for c in classes.tolist())
        return StrokeTable(self.points[rows], self.strokes[rows], offsets, names)

    def with_rotations(self) -> "StrokeTable":
        """The table of ``omniglot.with_rotations``: every row also turned as ``images.rot90(k, dims=(2, 3))``,
        k = 1, 2, 3, which takes a point (x, y) to (y, 1 - x) once per k."""
        turned, points = [self.points], self.points
        for _ in range(3):
            points = torch.stack([points[..., 1], 1 - points[..., 0]], -1)
            turned.append(points)
        names = tuple(f"{name}/rot{90 * k:03d}" for k in range(4) for name in self.class_names)
        return StrokeTable(torch.cat(turned), self.strokes.repeat(4, 1), _repeated(self.offsets, 4), names)

    def with_mirrors(self) -> "StrokeTable":
        """The table of ``omniglot.with_mirrors``: every row also mirrored as ``images.flip(3)``, x to 1 - x."""
        mirrored = torch.stack([1 - self.points[..., 0], self.points[..., 1]], -1)
        names = self.class_names + tuple(f"{name}/mirror" for name in self.class_names)
        return StrokeTable(torch.cat([self.points, mirrored]), self.strokes.repeat(2, 1), _repeated(self.offsets, 2),
                           names)


def _repeated(offsets: torch.Tensor, times: int) -> torch.Tensor:
    """The offsets of ``times`` copies of a table one after another (``ImageStore.cat``'s)."""
    return torch.cat([offsets[:1], *(offsets[1:] + copy * offsets[-1] for copy in range(times))])


def segments_of(strokes: torch.Tensor) -> torch.Tensor:
    """bool [..., P - 1] of per-point stroke indices [..., P] (-1 for padding): consecutive points of one stroke."""
    return (strokes[..., 1:] == strokes[..., :-1]) & (strokes[..., 1:] >= 0)


def render(points: torch.Tensor, segments: torch.Tensor, size: int, width=PEN_WIDTH) -> torch.Tensor:
    """Draw polylines as anti-aliased images, ink 1 and background 0, on the points' device.

    A pixel's ink is the part of it, across the nearest segment, that a pen of ``width`` covers: a box filter,
    so the edge is soft over about one output pixel and a pen thinner than a pixel gives grey. Only the pixels
    near a segment can be inked, so each segment measures its distance to the pixel centres of a small window
    around it (the same image as measuring every pixel, at a fraction of the cost) and each pixel keeps its
    darkest ink: one batch of tensor operations, no loop over images or segments.

    The default width, 0.049 of the side, is the one whose drawings rendered at 105 px and cut at 0.5 best match
    the official PNGs: mean IoU with their ink over all 2,720 drawings of images_background_small1 0.942, against
    0.612 at 0.03, 0.814 at 0.04, 0.926 at 0.045, 0.941 at 0.048, 0.937 at 0.05, 0.851 at 0.055 and 0.796 at 0.06
    (and ``FRAME`` is the offset that matches: over 500 drawings at 0.048, shifting every point by a quarter or a
    half pixel either way takes the mean IoU from 0.94 down to between 0.80 and 0.92).

    Args:
        points: float [B, P, 2], x right and y down in [0, 1] of the side.
        segments: bool [B, P - 1], whether the pen draws from point p to p + 1 (a dot: a segment of no length).
        size: the images' side in pixels.
        width: the pen's width as a fraction of the side, one for all images or float [B].

    Returns:
        float [B, 1, size, size] in [0, 1].
    """
    batch, device = points.shape[0], points.device
    width = torch.as_tensor(width, dtype=points.dtype, device=device).expand(batch) * size
    image, index = segments.nonzero(as_tuple=True)
    flat = points.reshape(-1, 2) * size  # in pixels from the corner
    first = image * points.shape[1] + index
    start, end, pen = _at(flat, first), _at(flat, first + 1), _at(width, image)
    # the pixel centres within half a segment, half a pen and half a pixel of its middle: a window of span²
    reach = float(((end - start).norm(dim=1).max() + pen.max() + 1) / 2 if len(image) else 0.0)
    span = math.floor(2 * reach) + 1
    # drawn on a canvas with a border of span pixels, so that every window lies on it: a window of a segment
    # far off the image is moved into the border, where its pixels are still measured and then cut away
    side = size + 2 * span
    corner = ((start + end) / 2 - reach - 0.5).ceil().clamp(-span, size)
    steps = torch.arange(span, device=device)
    row, column = steps.repeat_interleave(span), steps.repeat(span)  # the pixels of a window, row by row
    offsets = start - corner - 0.5  # from the window's first pixel centre to the segment's start
    ink = _coverage(_distance(column - offsets[:, :1], row - offsets[:, 1:], end - start), pen)
    window = image * side * side + (corner[:, 1].long() + span) * side + corner[:, 0].long() + span
    canvas = torch.zeros(batch * side * side, dtype=points.dtype, device=device)
    canvas.scatter_reduce_(0, (window[:, None] + row * side + column).flatten(), ink.flatten(), "amax")
    return canvas.view(batch, 1, side, side)[..., span:span + size, span:span + size]


def _distance(x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """[S, N]: the distance of points (x, y) [S, N], relative to their segment's start, to that segment,
    ``direction`` [S, 2] from its start to its end (a point when zero)."""
    dx, dy = direction[:, :1], direction[:, 1:]
    along = ((x * dx + y * dy) / (dx * dx + dy * dy).clamp(min=1e-12)).clamp_(0, 1)
    return torch.hypot(x - along * dx, y - along * dy)


def _coverage(distance: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """[S, N]: the part of a pixel (side 1) that a band of ``width`` [S] covers when its middle is ``distance``
    [S, N] from the pixel's centre: the overlap of [distance - width/2, distance + width/2] with [-1/2, 1/2],
    which (distance being >= 0) is width/2 + 1/2 - distance, at least 0 and at most min(width, 1)."""
    return (width[:, None] / 2 + 0.5 - distance).clamp_(min=0).minimum(width.clamp(max=1)[:, None])


RANGES = ("scale", "width")  # the settings that are [low, high]
# (least, most, most included, why): where a perturbation stops varying a drawing and starts destroying it
STROKE_BOUNDS = {
    "rotation": (0.0, 45.0, True, "past 45 degrees a turned stroke reads as another stroke (a bar as a post)"),
    "scale": (0.5, 2.0, True, "a stroke would shrink below half its size, or grow past twice it over its neighbours"),
    "shear": (0.0, 0.5, True, "a shear of 1 flattens a stroke to a line, and past 0.5 the shear alone changes it by "
                              "over a quarter"),
    "translate": (0.0, 0.25, True, "a stroke shifted past a quarter of the side leaves its character"),
    "jitter": (0.0, 0.1, True, "offsets past a tenth of the side turn a stroke into a scribble"),
    "width": (0.005, 0.2, True, "a pen thinner than half a pixel of the 105-px image draws next to nothing, and one "
                                "past a fifth of the side fills the character"),
    "drop": (0.0, 1.0, False, "a probability, and dropping every stroke would erase drawings"),
    "split": (0.0, 1.0, True, "a probability"),
    "fraction": (0.0, 1.0, True, "a share of the images"),
}


def check_strokes(settings: StrokesConfig) -> None:
    """Raise ValueError, naming the ``dataset.strokes`` key, its value and its bound, unless ``settings`` keeps a
    drawing recognisable."""
    for key in RANGES:
        value = getattr(settings, key)
        if not (len(value) == 2 and value[0] <= value[1]):
            raise ValueError(f"dataset.strokes.{key}={list(value)} is not [low, high] with low <= high; set e.g. "
                             f"dataset.strokes.{key}={list(getattr(StrokesConfig(), key))}")
    for key, (least, most, closed, why) in STROKE_BOUNDS.items():
        value = getattr(settings, key)
        values = list(value) if key in RANGES else [value]
        if not all(least <= v and (v <= most if closed else v < most) for v in values):
            raise ValueError(f"dataset.strokes.{key}={values if key in RANGES else value} is outside "
                             f"[{least:g}, {most:g}{']' if closed else ')'}: {why}; keep it in that range (the "
                             f"default is {getattr(StrokesConfig(), key)})")


def redraw(table: StrokeTable, rows: torch.Tensor, generator: torch.Generator,
           settings: StrokesConfig = StrokesConfig(), size: int = 28) -> torch.Tensor:
    """The drawings at ``rows`` drawn again with random perturbations of each stroke, on the table's device.

    Each stroke is distorted in its own frame (smooth jitter: random offsets at ``JITTER_KNOTS`` knots spread
    along it, interpolated), then moved by its own affine map about its centre (rotation, scale, shear,
    translation); then strokes are dropped (where all of a drawing's would be, its longest stays) and cut in two
    (strokes too short for a gap with a piece on each side are left whole), and each image gets its own pen width.
    Stroke order and the direction a stroke was drawn in do not change a static rendering, so they are not
    perturbed. A seeded ``generator`` (on the table's device) gives the same images.

    The cost grows with the segments drawn, and points about one output pixel apart are all a rendering needs:
    for 28 px, read the strokes with ``spacing=1/28`` (120 images then take about 4 ms of one CPU core, against
    about 10 ms at the default spacing, made for 105 px).

    Args:
        table: the drawings, on the device that renders them.
        rows: int64 [B] rows of ``table``, on its device.
        generator: the only source of randomness.
        settings: the ranges, within ``check_strokes``' bounds (checked once by the caller, not per batch).
        size: the images' side in pixels.

    Returns:
        float [B, 1, size, size], ink 1 and background 0.
    """
    strokes = _at(table.strokes, rows)
    # only the points the batch's longest drawing has, and a slot per stroke of its drawing of most strokes plus
    # one for the padding, in each row: per-stroke values live in a flat [B * per_row] tensor indexed by ``slot``
    longest = int((strokes >= 0).sum(1).max())
    points, strokes = _at(table.points, rows)[:, :longest], strokes[:, :longest]
    per_row, pen = int(strokes.max()) + 2, strokes >= 0
    slot = torch.arange(len(rows), device=rows.device)[:, None] * per_row + torch.where(pen, strokes, per_row - 1)
    slots, segments = len(rows) * per_row, segments_of(strokes)
    arc, length = _arc_lengths(points, segments, slot, slots)
    width = _uniform((len(rows),), settings.width, generator, points)
    points = points + _jitter(arc / _at(length.clamp(min=1e-12), slot), slot, slots, settings.jitter, generator)
    points = _move_strokes(points, slot, pen, slots, settings, generator)
    kept = _at(_kept_strokes(strokes, length, settings.drop, generator), slot[:, :-1])
    gap = (width + GAP_PIXELS / size).repeat_interleave(per_row)
    cut = _cuts(arc, length, slot, gap, settings.split, generator)
    return render(points, segments & kept & ~cut, size, width)


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for an index tensor of any shape, with ``index_select`` (several times faster on the CPU)."""
    return values.index_select(0, index.flatten()).view(*index.shape, *values.shape[1:])


def _uniform(shape: tuple, bounds, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform draws in [bounds[0], bounds[1]] of ``shape``, of ``like``'s dtype and device."""
    low, high = bounds
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) * (high - low) + low


def _arc_lengths(points: torch.Tensor, segments: torch.Tensor, slot: torch.Tensor, slots: int) -> tuple:
    """The arc length from its stroke's start to each point [B, P], and each stroke's length [slots]."""
    step = points[:, 1:] - points[:, :-1]
    steps = torch.hypot(step[..., 0], step[..., 1]) * segments
    total = torch.cat([torch.zeros_like(steps[:, :1]), steps.cumsum(1)], 1)
    start = total.new_zeros(slots).scatter_reduce_(0, slot.flatten(), total.flatten(), "amin", include_self=False)
    end = total.new_zeros(slots).scatter_reduce_(0, slot.flatten(), total.flatten(), "amax", include_self=False)
    return total - _at(start, slot), end - start


def _jitter(along: torch.Tensor, slot: torch.Tensor, slots: int, amplitude: float,
            generator: torch.Generator) -> torch.Tensor:
    """Offsets [B, P, 2]: each stroke's random knot offsets (within ``amplitude``) interpolated at ``along`` [B, P],
    the points' places in [0, 1] along their strokes."""
    knots = _uniform((slots, JITTER_KNOTS, 2), (-amplitude, amplitude), generator, along)
    place = along * (JITTER_KNOTS - 1)
    before = place.floor().clamp(max=JITTER_KNOTS - 2)
    index = slot * JITTER_KNOTS + before.long()
    knots = knots.view(-1, 2)
    return torch.lerp(_at(knots, index), _at(knots, index + 1), (place - before)[..., None])


def _move_strokes(points: torch.Tensor, slot: torch.Tensor, pen: torch.Tensor, slots: int, settings: StrokesConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """``points`` [B, P, 2] with each stroke moved by its own random affine map about its centre."""
    flat = slot.flatten()
    weight = pen.flatten().to(points.dtype)
    counts = weight.new_zeros(slots).index_add_(0, flat, weight).clamp(min=1)
    centre = points.new_zeros(slots, 2).index_add_(0, flat, points.reshape(-1, 2) * weight[:, None]) / counts[:, None]
    uniform = _uniform((slots, 7), (-1.0, 1.0), generator, points)
    angle = uniform[:, 0] * math.radians(settings.rotation)
    shear_x, shear_y = uniform[:, 1] * settings.shear, uniform[:, 2] * settings.shear
    low, high = settings.scale
    scale_x, scale_y = ((uniform[:, 3:5] + 1) / 2 * (high - low) + low).unbind(1)
    cos, sin = angle.cos(), angle.sin()
    # rotation @ shear [[1, shear_x], [shear_y, 1]] @ scale diag(scale_x, scale_y), entry by entry
    matrix = torch.stack([(cos - sin * shear_y) * scale_x, (cos * shear_x - sin) * scale_y,
                          (sin + cos * shear_y) * scale_x, (sin * shear_x + cos) * scale_y], 1)
    matrix, (x, y) = _at(matrix, slot), (points - _at(centre, slot)).unbind(-1)
    moved = torch.stack([matrix[..., 0] * x + matrix[..., 1] * y, matrix[..., 2] * x + matrix[..., 3] * y], -1)
    return moved + _at(centre + uniform[:, 5:7] * settings.translate, slot)


def _kept_strokes(strokes: torch.Tensor, length: torch.Tensor, drop: float, generator: torch.Generator) -> torch.Tensor:
    """bool [B * per_row]: the strokes (of ``strokes`` [B, P]) not dropped, each with probability ``drop``; where
    every stroke of a drawing would be, its longest (by ``length`` [B * per_row]) stays: a random one might be a
    dot, or off the image, and leave it blank."""
    length = length.view(len(strokes), -1)
    kept = torch.rand(length.shape, generator=generator, device=length.device) >= drop
    real = torch.arange(length.shape[1], device=length.device) <= strokes.max(1, keepdim=True).values
    longest = torch.zeros_like(kept).scatter_(1, torch.where(real, length, -1).argmax(1, keepdim=True), True)
    return (kept | (longest & ~(kept & real).any(1, keepdim=True))).flatten()


def _cuts(arc: torch.Tensor, length: torch.Tensor, slot: torch.Tensor, gap: torch.Tensor, split: float,
          generator: torch.Generator) -> torch.Tensor:
    """bool [B, P - 1]: the segments cut out of the strokes split with probability ``split``, a ``gap`` [slots] of
    arc at a random place, leaving at least a gap's length of stroke on either side."""
    chosen = (torch.rand(length.shape, generator=generator, device=length.device) < split) & (length >= 3 * gap)
    place = gap + torch.rand(length.shape, generator=generator, device=length.device) * (length - 2 * gap)
    middle = (arc[:, 1:] + arc[:, :-1]) / 2
    segment = slot[:, :-1]
    return _at(chosen, segment) & ((middle - _at(place, segment)).abs() < _at(gap, segment) / 2)


class Redrawing:
    """The meta-training sampler's stroke augmentation: a share of each batch's images re-drawn by ``redraw``
    from the drawings of their rows, the rest left as they are (``EpisodeSampler``'s ``redraw``)."""

    def __init__(self, table: StrokeTable, settings: StrokesConfig, size: int):
        """``table``: the drawings of the split's store, row for row, on the sampler's device; ``settings``:
        ``dataset.strokes``, already checked by ``check_strokes`` (``omniglot.build`` does, before it reads the
        sets); ``size``: the images' side in pixels."""
        self.table, self.settings, self.size = table, settings, size

    def __call__(self, pixels: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``pixels`` (float [B, 1, size, size], ink 255 as the store holds it, of the store's ``rows`` [B]) with
        a random ``fraction`` of them re-drawn."""
        chosen = torch.rand(len(rows), generator=generator, device=rows.device) < self.settings.fraction
        picked = chosen.nonzero().flatten()
        if len(picked) == 0:
            return pixels
        drawn = redraw(self.table, rows[picked], generator, self.settings, self.size) * 255
        return pixels.index_copy(0, picked, drawn.to(pixels.dtype))
