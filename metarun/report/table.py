"""The comparison table: runs × the overrides that differ between them × final metrics with CIs, ranked."""

import csv
from pathlib import Path

from metarun.logging.table import CI_SUFFIX, format_mean_ci

# metric names whose smaller values are better; anything else (acc, ...) ranks larger first
LOWER_IS_BETTER = ("mse", "loss", "error", "wall_s")


def lower_is_better(metric: str) -> bool:
    """Whether ``metric`` ranks ascending: losses and errors do, accuracies do not."""
    return any(word in metric.rsplit("/", 1)[-1] for word in LOWER_IS_BETTER)


def varying_overrides(runs: list) -> list:
    """Override keys whose value is not the same in every run (all of them for a single run), in first-seen order."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    if len(runs) == 1:
        return keys
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def metric_keys(runs: list) -> list:
    """The ``split/name`` metrics with a CI in any run's results, test before val."""
    keys = {key for run in runs if run.results for key in run.results if key + CI_SUFFIX in run.results}
    return sorted(keys, key=lambda k: (not k.startswith("test/"), k))


def rank(runs: list, metric: str | None, descending: bool | None = None) -> list:
    """``runs`` sorted by ``metric`` (direction inferred from its name unless given); runs without it go last.

    ``metric`` None keeps the order (nothing finished yet to rank by).

    Raises:
        ValueError: when no run has ``metric``.
    """
    if metric is None:
        return list(runs)
    available = sorted({key for run in runs if run.results for key, v in run.results.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if metric not in available:
        choices = ", ".join(available) or "none (no run has finished)"
        raise ValueError(f"--sort {metric}: no run has this metric; choose one of {choices}")
    descending = not lower_is_better(metric) if descending is None else descending
    have = [run for run in runs if run.results and run.results.get(metric) is not None]
    missing = [run for run in runs if run not in have]
    return sorted(have, key=lambda run: run.results[metric], reverse=descending) + missing


def table_rows(runs: list, overrides: list, metrics: list) -> tuple:
    """Header and rows for the terminal and Markdown: run, overrides, ``mean ± ci95`` per metric, wall time."""
    header = ["run", *overrides, *metrics, "wall_s"]
    rows = []
    for run in runs:
        results = run.results or {}
        cells = [format_mean_ci(results.get(m), results.get(m + CI_SUFFIX)) for m in metrics]
        status = f"{results['wall_s']:.1f}" if "wall_s" in results else "unfinished"
        rows.append([_job(run), *(run.overrides.get(key, "-") for key in overrides), *cells, status])
    return header, rows


def write_csv(path: Path, runs: list, overrides: list) -> None:
    """Every scalar of every run's results (means and CIs in columns of their own), one row per run."""
    scalars = list(dict.fromkeys(key for run in runs if run.results for key, value in run.results.items()
                                 if not isinstance(value, (list, dict))))
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "path", *overrides, *scalars])
        for run in runs:
            results = run.results or {}
            writer.writerow([_job(run), str(run.path), *(run.overrides.get(k, "") for k in overrides),
                             *(results.get(k, "") for k in scalars)])


def _job(run) -> str:
    # a sweep job's number, else the directory name
    number = run.path.name.split("_", 1)[0]
    return number if number.isdigit() else run.path.name
