"""The comparison tables: one per dataset, runs × the overrides that differ between them × final metrics with CIs."""

import csv
from pathlib import Path

from metarun.logging.table import CI_SUFFIX, is_accuracy, metric_text

# metric names whose smaller values are better; anything else (acc, ...) ranks larger first
LOWER_IS_BETTER = ("mse", "loss", "error", "wall_s")
# override values longer than this are cut in the middle in the tables (paths, long floats); report.csv keeps them
CELL_WIDTH = 24


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


def sortable(runs: list) -> list:
    """The numeric results keys of ``runs``: what ``--sort`` accepts."""
    return sorted({key for run in runs if run.results for key, v in run.results.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})


def by_dataset(runs: list) -> dict:
    """``{dataset: runs}`` in first-seen order: the runs of one dataset share their metrics."""
    groups = {}
    for run in runs:
        groups.setdefault(run.dataset(), []).append(run)
    return groups


def tables(runs: list, sort: str | None = None, descending: bool | None = None) -> dict:
    """``{dataset: ranked runs}``: each table ranked by ``sort`` where its runs have it, else by its first metric.

    Raises:
        ValueError: when no run has ``sort``.
    """
    if sort is not None and sort not in sortable(runs):
        choices = ", ".join(sortable(runs)) or "none (no run has finished)"
        raise ValueError(f"--sort {sort}: no run has this metric; choose one of {choices}")
    ranked = {}
    for dataset, members in by_dataset(runs).items():
        if sort in sortable(members):
            ranked[dataset] = rank(members, sort, descending)
        else:  # no --sort, or another dataset's metric: this table's first metric, in its own direction
            metrics = metric_keys(members)
            ranked[dataset] = rank(members, metrics[0] if metrics else None, None if sort else descending)
    return ranked


def rank(runs: list, metric: str | None, descending: bool | None = None) -> list:
    """``runs`` sorted by ``metric`` (direction inferred from its name unless given); runs without it go last.

    ``metric`` None keeps the order (nothing finished yet to rank by).
    """
    if metric is None:
        return list(runs)
    descending = not lower_is_better(metric) if descending is None else descending
    have = [run for run in runs if run.results and run.results.get(metric) is not None]
    missing = [run for run in runs if run not in have]
    return sorted(have, key=lambda run: run.results[metric], reverse=descending) + missing


def table_rows(runs: list) -> tuple:
    """Header and rows for the terminal and Markdown: run, the overrides that differ, ``mean ± ci95`` per metric
    (accuracies in percent, their header saying so), the average rank over sources where runs were meta-tested on
    several (Meta-Dataset's), wall time."""
    overrides, metrics, ranks = varying_overrides(runs), metric_keys(runs), average_ranks(runs)
    header = ["run", *overrides, *(f"{m} %" if is_accuracy(m) else m for m in metrics), *(["avg rank"] if ranks else []),
              "wall_s"]
    rows = []
    for run in runs:
        results = run.results or {}
        status = f"{results['wall_s']:.1f}" if "wall_s" in results else "unfinished"
        rank_cell = [f"{ranks[run.path]:.2f}" if run.path in ranks else "-"] if ranks else []
        rows.append([_job(run), *(shorten(run.overrides.get(key, "-")) for key in overrides),
                     *(metric_text(m, results.get(m), results.get(m + CI_SUFFIX)) for m in metrics), *rank_cell, status])
    return header, rows


def average_ranks(runs: list) -> dict:
    """{run path: its rank among ``runs`` on each test source, averaged over sources} (1 is best; ties share their
    mean rank), for the runs meta-tested on the same several sources (``test/sources``), as Meta-Dataset's tables
    rank methods; {} when fewer than two such runs."""
    scored = [run for run in runs if run.results and run.results.get("test/sources")]
    if len(scored) < 2 or len({tuple(run.results["test/sources"]) for run in scored}) > 1:
        return {}
    sources = scored[0].results["test/sources"]
    metric = next(key.split("/", 2)[2] for key in scored[0].results if key.startswith(f"test/{sources[0]}/") and
                  key + CI_SUFFIX in scored[0].results)
    totals = {run.path: 0.0 for run in scored}
    for source in sources:
        key = f"test/{source}/{metric}"
        values = [run.results[key] for run in scored]
        better = (lambda a, b: a < b) if lower_is_better(key) else (lambda a, b: a > b)
        for run, value in zip(scored, values):
            ahead, tied = sum(better(other, value) for other in values), sum(other == value for other in values)
            totals[run.path] += ahead + (tied + 1) / 2  # the mean of the ranks the tied runs share
    return {path: total / len(sources) for path, total in totals.items()}


def shorten(text: str, width: int = CELL_WIDTH) -> str:
    """``text`` with its middle cut to ``…`` when longer than ``width``: both ends tell paths and values apart."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def write_csv(path: Path, runs: list) -> None:
    """Every scalar of every run's results (means and CIs in columns of their own, accuracies as fractions), one
    row per run; a key both overridden and in results.json (``algo``) is one column, the override where set."""
    overrides = varying_overrides(runs)
    scalars = [key for key in dict.fromkeys(key for run in runs if run.results for key, value in run.results.items()
                                            if not isinstance(value, (list, dict))) if key not in overrides]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "path", *overrides, *scalars])
        for run in runs:
            results = run.results or {}
            writer.writerow([_job(run), str(run.path), *(run.overrides.get(k, results.get(k, "")) for k in overrides),
                             *(results.get(k, "") for k in scalars)])


def run_names(runs: list) -> list:
    """Each run's name as the tables print it (a sweep job's number, else its directory's name), or its path where
    two of ``runs`` would share a name (job 0 of two sweeps)."""
    names = [_job(run) for run in runs]
    return [name if names.count(name) == 1 else str(run.path) for run, name in zip(runs, names)]


def _job(run) -> str:
    # a sweep job's number, else the directory name
    number = run.path.name.split("_", 1)[0]
    return number if number.isdigit() else run.path.name
