"""Learning curves from metrics.jsonl: one panel per metric, one line per group of runs (their mean)."""

import textwrap
from pathlib import Path

from metarun.logging.table import CI_SUFFIX
from metarun.report.table import by_dataset, lower_is_better, varying_overrides

# legend entries wrap at this many characters (whole values: a label names its group), so a long label grows
# the legend downwards, not sideways
LABEL_WIDTH = 48


def default_curves(runs: list) -> list:
    """``train/loss`` and every validation metric the runs logged with a CI (``val/mse``; ``val/acc`` too when the
    runs mix datasets)."""
    keys = list(dict.fromkeys(key for run in runs for row in run.history for key in row))
    return ["train/loss", *(key for key in keys if key.startswith("val/") and key + CI_SUFFIX in keys)]


def curve_data(runs: list, metrics: list, group_by: str | None = None) -> dict:
    """``{metric: {group: {"step": [...], "mean": [...], "low": [...], "high": [...], "runs": n}}}``.

    A group is the runs of one dataset sharing the value of ``group_by`` (each run alone, named by the overrides
    that differ between the runs of its dataset, when None), its label led by the dataset when there are several;
    its curve is the mean over its runs at the steps they all logged, with the range across runs as low/high.

    Raises:
        ValueError: when no run logged one of ``metrics``.
    """
    groups, datasets = {}, by_dataset(runs)
    for dataset, members in datasets.items():
        prefix, varying = f"{dataset}: " if len(datasets) > 1 else "", varying_overrides(members)
        for run in members:
            if group_by:
                label = f"{group_by}={run.value(group_by)}"
            else:
                label = ", ".join(f"{key}={run.overrides.get(key, '-')}" for key in varying) or run.path.name
            groups.setdefault(prefix + label, []).append(run)
    data = {}
    for metric in metrics:
        if not any(row.get(metric) is not None for run in runs for row in run.history):
            logged = sorted({k for run in runs for row in run.history for k in row} - {"step"})
            raise ValueError(f"--curves {metric}: no run logged it in metrics.jsonl; choose from {', '.join(logged)}")
        data[metric] = {}
        for label, members in groups.items():
            series = [{row["step"]: row[metric] for row in run.history if row.get(metric) is not None} for run in members]
            steps = sorted(set.intersection(*(set(s) for s in series)))
            if steps:
                values = [[s[step] for s in series] for step in steps]
                data[metric][label] = {"step": steps, "mean": [sum(v) / len(v) for v in values],
                                       "low": [min(v) for v in values], "high": [max(v) for v in values],
                                       "runs": len(members)}
    return data


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
