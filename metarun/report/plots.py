"""Learning curves from metrics.jsonl: one panel per metric, one line per group of runs (their mean)."""

import math
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
# a curve of at most this many points is drawn with markers
MARKED_POINTS = 2


def default_curves(runs: list) -> list:
    """``train/loss`` and every validation metric the runs logged with a CI (``val/mse``; ``val/acc`` too when the
    runs mix datasets)."""
    keys = list(dict.fromkeys(key for run in runs for row in run.history for key in row))
    return ["train/loss", *(key for key in keys if key.startswith("val/") and key + CI_SUFFIX in keys)]


def curve_data(runs: list, metrics: list, group_by: str | None = None) -> dict:
    """``{metric: {group: {"step": [...], "mean": [...], "low": [...], "high": [...], "runs": n, "ci95": bool,
    "last": iteration}}}``.

    A group is the runs of one dataset sharing the value of ``group_by`` (each run alone, named by the overrides
    that differ between the runs of its dataset, when None), its label led by the dataset when there are several;
    its curve is ``mean_curve`` over those of its runs that logged the metric. A metric that no run, or only some
    runs of a dataset, logged in metrics.jsonl gets a warning line naming them, and the rest is plotted.

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
    """The mean of ``metric`` over the ``members`` that logged it, at the steps they all logged; None when none
    logged it at a common step.

    low/high span the runs' values, each widened by its 95% CI where ``metric`` has a ``<metric>_ci95`` companion
    (validation logs ``val/acc`` with ``val/acc_ci95``): a lone run's band is its CI. ``last`` is the last
    iteration of the longest of those runs, which the x-axis reaches.
    """
    logged = [run for run in members if any(is_number(row.get(metric)) for row in run.history)]
    series = [{row["step"]: (row[metric], ci95(row, metric)) for row in run.history if is_number(row.get(metric))}
              for run in logged]
    steps = sorted(set.intersection(*(set(points) for points in series))) if series else []
    if not steps:
        return None
    values = [[points[step] for points in series] for step in steps]  # (value, ci95) of each run, at each step
    return {"step": steps, "mean": [sum(value for value, _ in v) / len(v) for v in values],
            "low": [min(value - ci for value, ci in v) for v in values],
            "high": [max(value + ci for value, ci in v) for v in values], "runs": len(series),
            "ci95": any(ci for v in values for _, ci in v), "last": max(map(last_iteration, logged))}


def ci95(row: dict, metric: str) -> float:
    """The 95% CI half-width that ``row`` logged with ``metric``; 0 where there is none."""
    value = row.get(metric + CI_SUFFIX)
    return value if is_number(value) and math.isfinite(value) else 0.0


def last_iteration(run) -> int:
    """The run's last iteration: results.json's ``iterations``, else its config's ``train.iterations`` (a run still
    going, or one that failed), else the last step it logged."""
    if run.results and is_number(run.results.get("iterations")):
        return int(run.results["iterations"])
    try:
        return int(run.value("train.iterations"))
    except ValueError:  # neither overridden nor in its .hydra/config.yaml (a copied run), or not a number
        return max((row["step"] for row in run.history if is_number(row.get("step"))), default=0)


def plot_curves(data: dict, path: Path):
    """Draw ``curve_data`` output side by side into the PNG ``path``, one legend below all panels, and return the
    matplotlib Figure.

    Each panel's x-axis spans its runs, from step 0 to the last iteration of the longest; a group's band is shaded
    where it has width (``mean_curve``), and the panel says what it shows. Losses spanning decades get a log scale.
    """
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
            # markers where there are few points: a line alone draws nothing through one point, little through two
            marker = "o" if len(curve["step"]) <= MARKED_POINTS else None
            handles[name], = axes.plot(curve["step"], curve["mean"], marker=marker, markersize=5, color=colors[label])
            if any(low < high for low, high in zip(curve["low"], curve["high"])):
                draw_band(axes, curve, colors[label])
        axes.set(xlabel="step", ylabel=metric)
        axes.set_title(metric, loc="left")
        axes.set_title(band_note(groups.values()), loc="right", fontsize="small")
        span_runs(axes, groups.values())
        values = [v for curve in groups.values() for v in curve["mean"]]
        if values and lower_is_better(metric) and min(values) > 0 and max(values) > 10 * min(values):
            axes.set_yscale("log")  # losses fall over decades; a linear axis flattens the end of training
        axes.grid(alpha=0.3)
    # below the panels, outside the layout: any number of groups fits, and the tight box grows the PNG to hold it
    figure.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0), fontsize="small",
                  ncols=max(1, min(len(handles), len(data))))
    figure.savefig(path, dpi=80, bbox_inches="tight")
    return figure


def span_runs(axes, curves) -> None:
    """Set the x-axis of ``axes`` from step 0 to the last iteration of the longest run of ``curves``, whatever
    steps they logged (a run validated at its end alone is one point, not the whole axis)."""
    last = max(1, *(curve["last"] for curve in curves))  # at least one step wide
    margin = last * 0.02  # so that a marker at the last iteration is drawn whole
    axes.set_xlim(-margin, last + margin)


def draw_band(axes, curve: dict, color: str) -> None:
    """Shade ``curve``'s low/high band on ``axes``; a single point's band, which has no area, as an error bar."""
    if len(curve["step"]) > 1:
        axes.fill_between(curve["step"], curve["low"], curve["high"], color=color, alpha=0.2)
        return
    (mean,), (low,), (high,) = curve["mean"], curve["low"], curve["high"]
    axes.errorbar(curve["step"], curve["mean"], yerr=[[mean - low], [high - mean]], fmt="none", ecolor=color,
                  alpha=0.5, elinewidth=3)


def band_note(curves) -> str:
    """What the bands of a panel of ``curves`` show, or "" where none is shaded."""
    shown = [text for text, drawn in (("range over runs", any(curve["runs"] > 1 for curve in curves)),
                                      ("95% CI", any(curve["ci95"] for curve in curves))) if drawn]
    return f"band: {' ± '.join(shown)}" if shown else ""
