"""Learning curves from metrics.jsonl: one panel per metric, one line per group of runs (their mean)."""

import textwrap
from pathlib import Path

from metarun.logging.scalars import is_number
from metarun.logging.table import CI_SUFFIX
from metarun.report.runs import warn
from metarun.report.table import by_dataset, lower_is_better, varying_overrides

# legend entries wrap at this many characters (whole values: a label names its group), so a long label grows
# the legend downwards, not sideways
LABEL_WIDTH = 48
# a warning names this many of the runs that lack a metric, then counts the rest
SHOWN_RUNS = 3


def default_curves(runs: list) -> list:
    """``train/loss`` and every validation metric the runs logged with a CI (``val/mse``; ``val/acc`` too when the
    runs mix datasets)."""
    keys = list(dict.fromkeys(key for run in runs for row in run.history for key in row))
    return ["train/loss", *(key for key in keys if key.startswith("val/") and key + CI_SUFFIX in keys)]


def curve_data(runs: list, metrics: list, group_by: str | None = None) -> dict:
    """``{metric: {group: {"step": [...], "mean": [...], "low": [...], "high": [...], "runs": n}}}``.

    A group is the runs of one dataset sharing the value of ``group_by`` (each run alone, named by the overrides
    that differ between the runs of its dataset, when None), its label led by the dataset when there are several;
    its curve is the mean over those of its runs that logged the metric, at the steps they all logged, with the
    range across runs as low/high. A metric that no run, or only some runs of a dataset, logged in metrics.jsonl
    gets a warning line naming them, and the rest is plotted.

    Raises:
        ValueError: when none of ``metrics`` can be plotted (listing what the runs did log).
    """
    logged = {key for run in runs for row in run.history for key, value in row.items() if is_number(value)}
    logged.discard("step")
    missing = [metric for metric in metrics if metric not in logged]
    if missing == list(metrics):
        raise ValueError(not_logged(metrics, runs, logged))
    if missing:
        warn(not_logged(missing, runs, logged))
    groups, data = curve_groups(runs, group_by), {}
    for metric in (metric for metric in metrics if metric in logged):
        lacking(metric, runs)
        panel = {label: curve for label, members in groups.items() if (curve := mean_curve(members, metric))}
        if panel:
            data[metric] = panel
        else:
            warn(f"--curves {metric}: the runs of each group logged it at different steps, with none in common")
    if not data:
        raise ValueError(f"--curves {','.join(metrics)}: nothing to plot (see the warnings above)")
    return data


def not_logged(metrics: list, runs: list, logged: set) -> str:
    """The line saying that no run logged ``metrics`` in metrics.jsonl, and what the runs did log."""
    final = [metric for metric in metrics if any(run.results and metric in run.results for run in runs)]
    note = f" ({', '.join(final)}: in results.json, the final results the tables show)" if final else ""
    return (f"--curves {','.join(metrics)}: no run logged {'it' if len(metrics) == 1 else 'any of them'} in "
            f"metrics.jsonl{note}; {logged_text(logged)}")


def logged_text(logged: set) -> str:
    """What the runs logged, to choose ``--curves`` from."""
    if not logged:
        return "the runs logged no metric yet (pass --no-plot)"
    return f"the runs logged {', '.join(sorted(logged))}"


def lacking(metric: str, runs: list) -> None:
    """Warn, in one line, about the runs that did not log ``metric`` though others of their dataset did."""
    missing, counted = [], 0
    for members in by_dataset(runs).values():
        has = [any(is_number(row.get(metric)) for row in run.history) for run in members]
        if any(has):
            missing += [run for run, logged in zip(members, has) if not logged]
            counted += len(members)
    if missing:
        names = ", ".join(str(run.path) for run in missing[:SHOWN_RUNS])
        more = f" and {len(missing) - SHOWN_RUNS} more" if len(missing) > SHOWN_RUNS else ""
        warn(f"--curves {metric}: {len(missing)} of {counted} runs did not log it in metrics.jsonl and are left out "
             f"of its panel: {names}{more}")


def curve_groups(runs: list, group_by: str | None) -> dict:
    """``{label: runs}``: each dataset's runs by their ``group_by`` value, else each run alone."""
    groups, datasets = {}, by_dataset(runs)
    for dataset, members in datasets.items():
        prefix, varying = f"{dataset}: " if len(datasets) > 1 else "", varying_overrides(members)
        for run in members:
            if group_by:
                label = f"{group_by}={run.value(group_by)}"
            else:
                label = ", ".join(f"{key}={run.overrides.get(key, '-')}" for key in varying) or run.path.name
            groups.setdefault(prefix + label, []).append(run)
    return groups


def mean_curve(members: list, metric: str) -> dict | None:
    """The mean of ``metric`` over the ``members`` that logged it, at the steps they all logged, with the range as
    low/high; None when none logged it at a common step."""
    series = [{row["step"]: row[metric] for row in run.history if is_number(row.get(metric))} for run in members]
    series = [points for points in series if points]
    steps = sorted(set.intersection(*(set(points) for points in series))) if series else []
    if not steps:
        return None
    values = [[points[step] for points in series] for step in steps]
    return {"step": steps, "mean": [sum(v) / len(v) for v in values], "low": [min(v) for v in values],
            "high": [max(v) for v in values], "runs": len(series)}


def plot_curves(data: dict, path: Path) -> None:
    """Draw ``curve_data`` output side by side into the PNG ``path``, one legend below all panels (log scale for
    losses spanning decades)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install -e '.[report]', or pass --no-plot") from err
    labels = list(dict.fromkeys(label for groups in data.values() for label in groups))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # a group keeps its colour in every panel
    figure = Figure(figsize=(5 * len(data), 3.6), layout="constrained")
    handles = {}
    for axes, (metric, groups) in zip(figure.subplots(1, len(data), squeeze=False)[0], data.items()):
        for label, curve in groups.items():
            name = textwrap.fill(f"{label} (n={curve['runs']})" if curve["runs"] > 1 else label, LABEL_WIDTH)
            # markers: a run validated once has one point, which a line alone does not draw
            handles[name], = axes.plot(curve["step"], curve["mean"], marker="o", markersize=3, color=colors[label])
            if curve["runs"] > 1:
                axes.fill_between(curve["step"], curve["low"], curve["high"], color=colors[label], alpha=0.2)
        axes.set(xlabel="step", ylabel=metric, title=metric)
        values = [v for curve in groups.values() for v in curve["mean"]]
        if values and lower_is_better(metric) and min(values) > 0 and max(values) > 10 * min(values):
            axes.set_yscale("log")  # losses fall over decades; a linear axis flattens the end of training
        axes.grid(alpha=0.3)
    # below the panels, outside the layout: any number of groups fits, and the tight box grows the PNG to hold it
    figure.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0), fontsize="small",
                  ncols=max(1, min(len(handles), len(data))))
    figure.savefig(path, dpi=80, bbox_inches="tight")
