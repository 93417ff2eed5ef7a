"""Learning curves from metrics.jsonl: one panel per metric, one line per group of runs (their mean)."""

from pathlib import Path

from metarun.logging.table import CI_SUFFIX
from metarun.report.table import lower_is_better, varying_overrides


def default_curves(runs: list) -> list:
    """``train/loss`` and the first validation metric the runs logged (e.g. ``val/mse``)."""
    keys = list(dict.fromkeys(key for run in runs for row in run.history for key in row))
    val = [k for k in keys if k.startswith("val/") and not k.endswith(CI_SUFFIX)
           and all(isinstance(row.get(k), (int, float, type(None))) for run in runs for row in run.history)]
    return ["train/loss", *val[:1]]


def curve_data(runs: list, metrics: list, group_by: str | None = None) -> dict:
    """``{metric: {group: {"step": [...], "mean": [...], "low": [...], "high": [...], "runs": n}}}``.

    A group is the runs sharing the value of ``group_by`` (each run alone, named by the overrides that differ
    between runs, when None); its curve is the mean over
    its runs at the steps they all logged, with the range across runs as low/high.

    Raises:
        ValueError: when no run logged one of ``metrics``.
    """
    groups, varying = {}, varying_overrides(runs)
    for run in runs:
        if group_by:
            label = f"{group_by}={run.value(group_by)}"
        else:
            label = ",".join(f"{key}={run.overrides.get(key, '-')}" for key in varying) or run.path.name
        groups.setdefault(label, []).append(run)
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
    """Draw ``curve_data`` output side by side into the PNG ``path`` (log scale for losses spanning decades)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install -e '.[report]', or pass --no-plot") from err
    figure = Figure(figsize=(5 * len(data), 3.6), layout="constrained")
    for axes, (metric, groups) in zip(figure.subplots(1, len(data), squeeze=False)[0], data.items()):
        for label, curve in groups.items():
            line, = axes.plot(curve["step"], curve["mean"], label=f"{label} (n={curve['runs']})" if curve["runs"] > 1 else label)
            if curve["runs"] > 1:
                axes.fill_between(curve["step"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2)
        axes.set(xlabel="step", ylabel=metric, title=metric)
        values = [v for curve in groups.values() for v in curve["mean"]]
        if lower_is_better(metric) and min(values) > 0 and max(values) > 10 * min(values):
            axes.set_yscale("log")  # losses fall over decades; a linear axis flattens the end of training
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize="small")
    figure.savefig(path, dpi=80)
