"""Omniglot's pen strokes: reading and resampling, the table's alignment with the image store (rotations, mirrors,
classes), rendering against a dense reference and against the official images, and stroke-level redrawing."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from imagetrees import zip_tree

from metarun.config.datasets import StrokesConfig
from metarun.data.files.store import ImageStore
from metarun.data.omniglot import read_set, with_mirrors, with_rotations
from metarun.data.sampling.strokes import (
    FRAME,
    PEN_WIDTH,
    SIDE,
    STROKE_BOUNDS,
    StrokeTable,
    check_strokes,
    read_strokes,
    redraw,
    render,
)
from metarun.utils.errors import RunError

STROKES = "strokes_background_small1.zip"
# a horizontal line of 10.5 px sampled unevenly, a lone sample, and a quarter circle sampled at uneven angles
LINE = ["0,0,0", "1,0,10", "1,0,15", "5,0,20", "10.5,0,30"]
ANGLES = np.sort(np.random.default_rng(0).uniform(0, math.pi / 2, 60))
ARC = [f"{40 + 30 * math.cos(a):.6f},{-40 - 30 * math.sin(a):.6f},{i}" for i, a in enumerate(ANGLES)]
DRAWING = "\n".join(["START", *LINE, "BREAK", "20,-20,40", "BREAK", *ARC, "BREAK", ""])
NO_CHANGE = StrokesConfig(rotation=0.0, scale=[1.0, 1.0], shear=0.0, translate=0.0, jitter=0.0,
                           width=(PEN_WIDTH, PEN_WIDTH), drop=0.0, split=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in tests/algos: on a busy 2-core machine two make these small batches many times
    slower (tests/conftest.py puts the count back after each test)."""
    torch.set_num_threads(1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_drawings(root, files: dict):
    """Write ``{relative path: text}`` under ``root``; returns ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def tiny_tree(root):
    """Three classes over two alphabets; the second drawer of Alpha/character01 is a lone dot."""
    return write_drawings(root, {"Beta/character01/0002_01.txt": DRAWING,
                                 "Alpha/character01/0001_02.txt": "START\n3,-3,0\nBREAK\n",
                                 "Alpha/character01/0001_01.txt": DRAWING, "Alpha/character02/0003_01.txt": DRAWING})


def test_reader_parses_resamples_and_normalises_the_frame(tmp_path):
    drawings = read_strokes(tiny_tree(tmp_path / "tree"), spacing=0.01)
    assert list(drawings) == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    line, dot, arc = drawings["Alpha/character01"][0]
    # 0.1 of the side in 10 steps of 0.01, x right, y down, the files' pixel centres at FRAME
    expected = np.stack([(np.linspace(0, 10.5, 11) + FRAME) / SIDE, np.full(11, FRAME / SIDE)], 1)
    np.testing.assert_allclose(line, expected, atol=1e-6)
    assert line.dtype == np.float32
    np.testing.assert_allclose(dot, [[20.5 / SIDE, 20.5 / SIDE]], atol=1e-7)
    steps = np.linalg.norm(np.diff(arc, axis=0), axis=1)
    assert abs(steps.mean() - 0.01) < 0.0005 and steps.max() / steps.min() < 1.02  # uniform, whatever the samples
    first = [40 + 30 * math.cos(ANGLES[0]) + FRAME, 40 + 30 * math.sin(ANGLES[0]) + FRAME]  # y up in the file
    np.testing.assert_allclose(arc[0], np.array(first) / SIDE, atol=1e-6)
    # drawings of a class in file name order: drawer 01, then drawer 02 (a lone dot)
    np.testing.assert_allclose(drawings["Alpha/character01"][1][0], [[3.5 / SIDE, 3.5 / SIDE]], atol=1e-7)


def test_a_zip_with_a_wrapper_and_macos_entries_reads_as_its_folder(tmp_path):
    tree = tiny_tree(tmp_path / "tree")
    stubs = (".DS_Store", "Alpha/.DS_Store", "__MACOSX/Alpha/character01/._0001_01.txt")
    write_drawings(tree, dict.fromkeys(stubs, "junk"))
    folder, zipped = read_strokes(tree), read_strokes(zip_tree(tree, tmp_path / "strokes.zip", wrapper="strokes/"))
    assert list(folder) == list(zipped) == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    for name in folder:
        for ours, theirs in zip(folder[name], zipped[name], strict=True):
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("text,message", [
    ("START\n1,2,3\n1,abc,3\nBREAK\n",
     r"0001_01.txt line 3 is '1,abc,3', not 'x,y,t', START or BREAK; replace or remove that file"),
    ("START\n1,2\n3,4,5,6\nBREAK\n", r"line 2 is '1,2', not 'x,y,t'"),
    ("START\n1,2,3\nnan,2,3\nBREAK\n", r"line 3 is 'nan,2,3'"),
    ("START\n1,2,3\nbreak\n", r"line 3 is 'break'"),
    ("START\nBREAK\n", r"0001_01.txt has no pen samples \(no 'x,y,t' lines\); replace or remove that file"),
])
def test_a_bad_drawing_is_one_line_naming_the_file_and_line(tmp_path, text, message):
    write_drawings(tmp_path, {"Alpha/character01/0001_01.txt": text})
    with pytest.raises(RunError, match=message) as error:
        read_strokes(tmp_path)
    assert "\n" not in str(error.value)


def test_missing_files_and_other_layouts_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.zip does not exist; put the strokes folder or zip there"):
        read_strokes(tmp_path / "nowhere.zip")
    write_drawings(tmp_path / "flat", {"Alpha/0001_01.txt": DRAWING, "Beta/0002_01.txt": DRAWING})
    with pytest.raises(RunError, match="drawing Alpha/0001_01.txt outside <Alphabet>/<character>/<drawing>.txt"):
        read_strokes(tmp_path / "flat")


def tiny_store(names, counts) -> ImageStore:
    """A store of 4x4 blank images, ``counts`` of each class of ``names``: the rows and names without the pixels."""
    offsets = torch.tensor([0, *counts]).cumsum(0)
    return ImageStore(torch.zeros(int(offsets[-1]), 1, 4, 4, dtype=torch.uint8), offsets, tuple(names))


def test_the_table_refuses_a_store_of_other_classes(tmp_path):
    drawings = read_strokes(tiny_tree(tmp_path))
    table = StrokeTable.build(drawings, tiny_store(drawings, [2, 1, 1]))
    longest = sum(len(stroke) for stroke in drawings["Alpha/character01"][0]) + 1  # DRAWING's, its dot twice
    assert table.points.shape == (4, longest, 2) and table.strokes.shape == (4, longest)
    assert table.strokes[1].tolist()[:3] == [0, 0, -1] and table.segments[1].tolist()[:2] == [True, False]
    with pytest.raises(RunError, match="1 drawings of Alpha/character02 where its images have 2"):
        StrokeTable.build(drawings, tiny_store(drawings, [2, 2, 1]))
    with pytest.raises(RunError, match="0 drawings of Gamma/character01 where its images have 1"):
        StrokeTable.build(drawings, tiny_store([*drawings, "Gamma/character01"], [2, 1, 1, 1]))
    with pytest.raises(RunError, match="class Beta/character01 in another order or beyond the images' classes"):
        StrokeTable.build(drawings, tiny_store(list(drawings)[:2], [2, 1]))


def dense_render(points, segments, size, width):
    """The plain reference: every pixel's distance to every segment, then the box-filtered pen."""
    centres = torch.stack(torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="xy"), -1)
    centres = centres.view(1, -1, 1, 2)
    start, end = points[:, None, :-1] * size, points[:, None, 1:] * size
    direction = end - start
    along = (((centres - start) * direction).sum(-1) / (direction * direction).sum(-1).clamp(min=1e-12)).clamp(0, 1)
    distance = (centres - start - along[..., None] * direction).norm(dim=-1)
    distance = torch.where(segments[:, None], distance, math.inf).amin(-1)
    pen = torch.as_tensor(width).expand(len(points))[:, None] * size
    ink = ((distance + pen / 2).clamp(max=0.5) - (distance - pen / 2).clamp(min=-0.5)).clamp(0, 1)
    return ink.view(-1, 1, size, size)


@pytest.mark.parametrize("size", [7, 28, 105])
def test_render_equals_measuring_every_pixel(size):
    points = torch.rand(6, 40, 2, generator=seeded(size)) * 1.4 - 0.2  # partly off the image
    segments = torch.rand(6, 39, generator=seeded(size + 1)) < 0.7
    points[:, 5] = points[:, 4]  # a dot
    width = torch.tensor([0.01, 0.03, 0.05, 0.1, 0.2, 0.049])
    out = render(points, segments, size, width)
    assert out.shape == (6, 1, size, size) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, dense_render(points, segments, size, width), atol=1e-4, rtol=0)
    assert render(points, torch.zeros_like(segments), size).abs().sum() == 0


@pytest.fixture(scope="module")
def small1(omniglot_dir):
    """The real images_background_small1 at 105 px and its strokes, read once for the module."""
    if not (omniglot_dir / STROKES).exists():
        pytest.skip(f"the real Omniglot strokes {STROKES} are not in {omniglot_dir} (set METARUN_SHARED)")
    store = read_set(omniglot_dir / "images_background_small1.zip", 105)
    return store, StrokeTable.build(read_strokes(omniglot_dir / STROKES), store)


def iou(drawn: torch.Tensor, ink: torch.Tensor) -> torch.Tensor:
    """[C, D, D]: for each character, the IoU of each drawer's rendering with each drawer's image."""
    drawn, ink = drawn.flatten(2).float(), ink.flatten(2).float()
    both = drawn @ ink.transpose(1, 2)
    return both / (drawn.sum(-1)[..., None] + ink.sum(-1)[:, None] - both)


def test_a_rendering_overlaps_its_own_image_far_more_than_other_drawers(small1):
    store, table = small1
    characters = torch.randperm(store.num_classes, generator=seeded(0))[:24]
    rows = (store.offsets[characters][:, None] + torch.arange(20)).flatten()
    drawn = render(table.points[rows], table.segments[rows], 105) > 0.5
    overlap = iou(drawn.view(24, 20, -1), (store.images[rows] > 127).view(24, 20, -1))
    own = overlap.diagonal(dim1=1, dim2=2)
    others = overlap.masked_fill(torch.eye(20, dtype=torch.bool), -1)
    assert own.mean() > 0.9 and own.mean() > others.clamp(min=0).sum(-1).mean() / 19 + 0.6
    assert (own > others.amax(-1)).float().mean() > 0.95


def test_rotations_mirrors_and_selections_follow_the_store(small1):
    store, table = small1
    rows = torch.tensor([0, 37, 1000, 2719])
    plain = render(table.points[rows], table.segments[rows], 28)
    names_only = tiny_store(store.class_names, store.counts.tolist())  # the names and offsets, without the pixels
    turned, turned_store = table.with_rotations(), with_rotations(names_only)
    assert turned.class_names == turned_store.class_names and torch.equal(turned.offsets, turned_store.offsets)
    for k in range(4):
        shifted = rows + k * len(store.images)
        drawn = render(turned.points[shifted], turned.segments[shifted], 28)
        torch.testing.assert_close(drawn, plain.rot90(k, dims=(2, 3)), atol=1e-4, rtol=0)
    both, both_store = turned.with_mirrors(), with_mirrors(turned_store)
    assert both.class_names == both_store.class_names and torch.equal(both.offsets, both_store.offsets)
    shifted = rows + 4 * len(store.images)
    mirrored = render(both.points[shifted], both.segments[shifted], 28)
    torch.testing.assert_close(mirrored, plain.flip(3), atol=1e-4, rtol=0)
    chosen, chosen_store = table.select([5, 2]), names_only.select([5, 2])
    assert chosen.class_names == chosen_store.class_names and torch.equal(chosen.offsets, chosen_store.offsets)
    assert torch.equal(chosen.points[:20], table.points[store.offsets[5]:store.offsets[6]])


def test_redraw_is_seeded_bounded_and_unchanged_without_perturbations(small1):
    _, table = small1
    rows = torch.randint(0, len(table.points), (40,), generator=seeded(3))
    out = redraw(table, rows, seeded(1))
    assert out.shape == (40, 1, 28, 28) and out.dtype == torch.float32 and out.device == table.points.device
    assert out.min() >= 0 and out.max() <= 1 and (out.flatten(1).amax(1) > 0.5).all()
    assert torch.equal(out, redraw(table, rows, seeded(1))) and not torch.equal(out, redraw(table, rows, seeded(2)))
    plain = render(table.points[rows], table.segments[rows], 28)
    torch.testing.assert_close(redraw(table, rows, seeded(1), NO_CHANGE), plain, atol=1e-4, rtol=0)
    assert not torch.allclose(out, plain, atol=0.1)


def test_dropping_and_splitting_never_erase_a_drawing(small1):
    _, table = small1
    rows = torch.arange(0, len(table.points), 7)
    harsh = StrokesConfig(drop=0.99, split=1.0)
    kept = redraw(table, rows, seeded(0), harsh).flatten(1).sum(1)
    assert (kept > 1).all()
    whole = redraw(table, rows, seeded(0), StrokesConfig(drop=0.0, split=0.0)).flatten(1).sum(1)
    assert (kept < whole).float().mean() > 0.5  # most drawings of several strokes lost some
    # a split takes a small gap out of each long stroke: some ink, never most of it
    split = redraw(table, rows, seeded(0), replace(NO_CHANGE, split=1.0)).flatten(1).sum(1)
    plain = render(table.points[rows], table.segments[rows], 28).flatten(1).sum(1)
    assert (split < plain - 1).float().mean() > 0.9 and (split > 0.6 * plain).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_redraw_stays_on_the_tables_cuda_device(tmp_path):
    drawings = read_strokes(tiny_tree(tmp_path))
    table = StrokeTable.build(drawings, tiny_store(drawings, [2, 1, 1]))
    cuda, rows = table.to(torch.device("cuda")), torch.tensor([0, 1, 2, 3, 0, 2], device="cuda")
    out = redraw(cuda, rows, torch.Generator("cuda").manual_seed(0))
    assert out.device.type == "cuda" and out.shape == (6, 1, 28, 28)
    assert torch.equal(out, redraw(cuda, rows, torch.Generator("cuda").manual_seed(0)))
    plain = render(table.points[rows.cpu()], table.segments[rows.cpu()], 28)
    unchanged = redraw(cuda, rows, torch.Generator("cuda").manual_seed(0), NO_CHANGE)
    torch.testing.assert_close(unchanged.cpu(), plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("key,value,bound", [
    ("rotation", -1.0, r"\[0, 45\]"), ("rotation", 90.0, r"\[0, 45\]"), ("shear", 0.6, r"\[0, 0.5\]"),
    ("scale", (0.4, 1.0), r"\[0.5, 2\]"), ("scale", (1.2, 0.9), "low <= high"), ("translate", -0.01, r"\[0, 0.25\]"),
    ("jitter", 0.2, r"\[0, 0.1\]"), ("width", (0.0, 0.05), r"\[0.005, 0.2\]"), ("width", (0.06, 0.04), "low <= high"),
    ("drop", 1.0, r"\[0, 1\): a probability, and dropping every stroke would erase drawings"),
    ("drop", -0.1, r"\[0, 1\)"),
    ("split", 1.5, r"\[0, 1\]: a probability"),
    ("fraction", 1.01, r"\[0, 1\]: a share of the images"),
])
def test_check_strokes_names_the_key_its_value_and_bound(key, value, bound):
    with pytest.raises(ValueError, match=rf"dataset\.strokes\.{key}=.*{bound}"):
        check_strokes(StrokesConfig(**{key: value}))


def test_the_defaults_pass_and_every_bound_is_tested():
    check_strokes(StrokesConfig())
    check_strokes(NO_CHANGE)
    assert set(STROKE_BOUNDS) == {"rotation", "scale", "shear", "translate", "jitter", "width", "drop", "split",
                                  "fraction"}
