"""``metarun-report``: compare finished runs from their run directories (no wandb needed).

runs.py finds the runs and reads them, table.py ranks them by a metric, plots.py draws learning curves,
cli.py is the command; ``load_runs`` gives the runs to a notebook as a table.
"""

import os
from typing import Sequence, Union

from metarun.report.runs import find_runs
from metarun.report.table import run_names

Paths = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def load_runs(paths: Paths, as_frame: bool = False):
    """The runs in ``paths`` (a sweep directory, a folder of runs, run directories) as a table, one row per run.

    Each row holds ``run`` (a sweep job's number, else the directory's name), ``path``, every key any of the runs
    overrides, then the scalars of its results.json (none while it runs). A key both overridden and in
    results.json (``algo``) is one column, the override where the run sets it, as in metarun-report's report.csv;
    a key the run does not override is its results' value, else None.

    Args:
        as_frame: return a pandas DataFrame instead of a list of dicts.

    Raises:
        FileNotFoundError: a path does not exist or holds no run.
        ImportError: ``as_frame`` without pandas installed.
    """
    runs = find_runs([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))
    overrides = list(dict.fromkeys(key for run in runs for key in run.overrides))
    rows = []
    for run, name in zip(runs, run_names(runs)):
        results = run.results or {}
        scalars = {key: value for key, value in results.items()
                   if key not in overrides and not isinstance(value, (list, dict))}
        rows.append({"run": name, "path": str(run.path),
                     **{key: run.overrides.get(key, results.get(key)) for key in overrides}, **scalars})
    return frame(rows) if as_frame else rows


def frame(rows: list):
    """``rows`` (dicts) as a pandas DataFrame.

    Raises:
        ImportError: pandas is not installed; the message names the command that installs it.
    """
    try:
        import pandas
    except ImportError:
        raise ImportError("a DataFrame needs pandas, which is not installed: pip install pandas (or use the list "
                          "of dicts)") from None
    return pandas.DataFrame(rows)
