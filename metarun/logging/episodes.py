"""test_episodes.npz: each meta-test episode's metric, written beside results.json, for paired comparisons of runs.

Every meta-test scores fixed, seeded episodes (episode ``i`` of split ``test`` with ``eval.seed`` ``s`` is the same
task in every run), so two runs evaluated alike can be compared episode by episode (``metarun-report --paired``).

Format 1: a NumPy ``.npz`` archive without pickled objects (``np.load(path)`` reads it; ``allow_pickle=False``
works) holding

- ``index``: int64 ``[episodes]``, each row's episode index (0, 1, ... for ``eval.episodes`` episodes);
- ``curve``: float64 ``[episodes, steps]``, each episode's metric after 0, 1, ... test-time inner steps;
- ``metric``: float64 ``[episodes]``, each episode's final metric (``curve``'s last column: what ``test/<metric>``
  in results.json averages; accuracies as fractions; NaN for an episode whose inner loop diverged);
- ``meta``: a 0-d string array, the JSON object ``{"format": 1, "split", "seed", "ways", "shots", "queries",
  "metric", "dataset", "algo"}``: ``seed`` is ``eval.seed``, the sizes are those the episodes were drawn with
  (``null`` where the dataset has no such size), ``metric`` is the metric's name (``acc``, ``mse``).

Read it in Python with ``read_episodes`` (checks the format), or with plain NumPy::

    with np.load("outputs/runs/.../test_episodes.npz") as data:
        accuracies, meta = data["metric"], json.loads(data["meta"].item())
"""

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarun.utils.atomic import atomic_path
from metarun.utils.errors import first_line, writing

FILE_NAME = "test_episodes.npz"
FORMAT = 1
ARRAYS = ("index", "curve", "metric", "meta")
META_KEYS = ("format", "split", "seed", "ways", "shots", "queries", "metric", "dataset", "algo")


@dataclass(frozen=True)
class Episodes:
    """One run's per-episode results read back."""

    index: np.ndarray  # int64 [episodes]: each row's episode index
    metric: np.ndarray  # float64 [episodes]: each episode's final metric
    curve: np.ndarray  # float64 [episodes, steps]: the metric after 0, 1, ... test-time inner steps
    meta: dict  # format, split, seed, ways, shots, queries, metric, dataset, algo


def write_episodes(path: Path, curves, *, indices, seed: int, split: str, ways: int | None, shots: int | None,
                   queries: int | None, metric: str, dataset: str, algo: str) -> None:
    """Write the per-episode file ``path`` (``<run>/test_episodes.npz``) through a temporary file and a rename.

    Args:
        curves: ``[episodes, steps]`` per-episode metric after 0, 1, ... inner steps (a tensor on any device, or
            anything NumPy reads); the last column is each episode's final metric.
        indices: the episode index of each row (e.g. ``range(eval.episodes)``).
        seed: ``eval.seed``, which fixed the episodes.
        ways, shots, queries: the sizes the episodes were drawn with, resolved (``eval.ways=null`` is the
            dataset's ways); None where the dataset has no such size.
        metric: the metric's name without its split (``acc``, ``mse``).

    Raises:
        ValueError: ``curves`` is not 2-D with a row per index, or ``indices`` repeat an episode.
    """
    curve = as_float64(curves)
    index = np.asarray(indices, dtype=np.int64)
    if curve.ndim != 2 or curve.shape[1] == 0 or index.shape != (curve.shape[0],):
        raise ValueError(f"write_episodes({path}): curves of shape {list(curve.shape)} need to be [episodes, steps] "
                         f"with one row per index ({index.size} indices)")
    if np.unique(index).size != index.size:
        raise ValueError(f"write_episodes({path}): indices repeat an episode; pass each episode's index once")
    meta = {"format": FORMAT, "split": split, "seed": seed, "ways": ways, "shots": shots, "queries": queries,
            "metric": metric, "dataset": dataset, "algo": algo}
    path = Path(path)
    with writing(path, curve.nbytes + index.nbytes * 2, run_dir=path.parent), atomic_path(path) as tmp:
        # a file object: np.savez would append ".npz" to the temporary file's name
        with open(tmp, "wb") as file:
            np.savez(file, index=index, curve=curve, metric=curve[:, -1], meta=np.array(json.dumps(meta)))


def as_float64(values) -> np.ndarray:
    """``values`` as a float64 NumPy array: a torch tensor of any float type on any device, or an array-like."""
    if hasattr(values, "detach"):  # torch, not imported here: bfloat16 and CUDA tensors do not go to NumPy as they are
        values = values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def read_episodes(path: Path) -> Episodes:
    """The per-episode results in ``path``, checked against the format above.

    Raises:
        ValueError: the file is missing, unreadable, or not a metarun per-episode file of this format; the
            message names the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path.parent} has no {path.name}; {reevaluate(path.parent)}")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle and say so
        raise ValueError(f"{path} is not a NumPy .npz archive; {reevaluate(path.parent)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ARRAYS}
        meta = json.loads(arrays["meta"].item())
    except Exception as err:  # a cut-off archive, pickled or missing entries: the same fix
        raise ValueError(f"cannot read {path} ({err.__class__.__name__}: {first_line(err)}); "
                         f"{reevaluate(path.parent)}") from err
    problem = format_problem(arrays, meta)
    if problem:
        raise ValueError(f"{path} is not a metarun per-episode file of format {FORMAT} ({problem}); "
                         f"{reevaluate(path.parent)}")
    return Episodes(index=arrays["index"], metric=arrays["metric"], curve=arrays["curve"], meta=meta)


def format_problem(arrays: dict, meta) -> str:
    """What in ``arrays`` (the npz's entries) and ``meta`` (its decoded JSON) departs from the format; "" if nothing."""
    if not isinstance(meta, dict):
        return "meta is not a JSON object"
    if meta.get("format") != FORMAT:
        return f"meta.format is {meta.get('format')}"
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        return f"meta lacks {', '.join(missing)}"
    index, curve, metric = arrays["index"], arrays["curve"], arrays["metric"]
    if index.ndim != 1 or index.dtype.kind not in "iu" or np.unique(index).size != index.size:
        return "index is not a list of distinct episode indices"
    if curve.ndim != 2 or curve.shape[0] != index.size or curve.shape[1] == 0 or curve.dtype.kind != "f":
        return f"curve has shape {list(curve.shape)} for {index.size} episodes"
    if metric.shape != index.shape or metric.dtype.kind != "f":
        return f"metric has shape {list(metric.shape)} for {index.size} episodes"
    return ""


def reevaluate(run: Path) -> str:
    """The fix for a run without a readable per-episode file: a re-evaluation that writes one."""
    return (f"re-evaluate the run with a metarun version that writes per-episode results (metarun mode=eval "
            f"checkpoint={run}/checkpoints/best.pt), then compare the run directory it writes")
