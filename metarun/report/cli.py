"""The ``metarun-report`` command: rank runs by a metric, write the tables as text/Markdown/CSV, plot curves; or,
with ``--paired``, compare runs episode by episode."""

import argparse
import sys
from pathlib import Path

from metarun.logging.table import render_markdown, render_text
from metarun.report import paired
from metarun.report.plots import curve_data, default_curves, plot_curves
from metarun.report.runs import find_runs
from metarun.report.table import run_names, shorten, table_rows, tables, varying_overrides, write_csv

# the options of the ranked report that --paired has no use for
RANKING_OPTIONS = {"sort": "--sort", "descending": "--ascending/--descending", "group_by": "--group-by",
                   "curves": "--curves"}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="metarun-report",
        description="Compare metarun runs: ranked tables and learning curves, from run directories; with --paired, "
                    "significance tests over the test episodes they share.",
        epilog="One table per dataset (its runs share metrics). Tables show accuracies as percentages, the CI in points "
               "(test/acc %: 58.49 ± 1.23%), and cut long override values in the middle; report.csv keeps every value "
               "as results.json has it (accuracies as fractions, e.g. 0.5849), one row per run.")
    parser.add_argument("paths", nargs="+", help="a sweep directory (outputs/multirun/...) or run directories")
    parser.add_argument("--sort", help="metric to rank by; a table without it ranks by its own "
                                       "(default: each table's first test metric, e.g. test/mse)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--ascending", dest="descending", action="store_false", default=None,
                           help="smallest first (default for mse/loss/error)")
    direction.add_argument("--descending", dest="descending", action="store_true", help="largest first (default for acc)")
    parser.add_argument("--group-by", help="an override or config key: one curve per value (e.g. algo)")
    parser.add_argument("--curves", help="comma-separated metrics to plot (default: train/loss and the validation metrics)")
    parser.add_argument("--out", type=Path,
                        help="where report.md, report.csv (raw values: accuracies as fractions), curves.png go "
                             "(default: the sweep directory, or ./report)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--paired", action="store_true",
                        help="compare two or more runs scored on the same test episodes (their test_episodes.npz), "
                             "every pair: mean difference with its 95%% CI, paired t-test, Wilcoxon signed-rank, "
                             "Holm-corrected p; writes paired.md and paired.csv (needs scipy)")
    args = parser.parse_args(argv)
    unused = [flag for key, flag in RANKING_OPTIONS.items() if args.paired and getattr(args, key) is not None]
    if unused:
        parser.error(f"--paired takes run directories and --out only; drop {', '.join(unused)}")
    return args


def report(args: argparse.Namespace) -> dict:
    """Build the report for ``args``, print the tables and return what was written and plotted."""
    runs = find_runs(args.paths)
    ranked_tables = tables(runs, args.sort, args.descending)
    ranked = [run for members in ranked_tables.values() for run in members]
    out = out_dir(args, runs)
    # the curves are worked out first: a report that cannot plot them writes nothing
    data = None if args.no_plot else curve_data(ranked, args.curves.split(",") if args.curves else
                                                default_curves(ranked), args.group_by)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render_tables(ranked_tables, render_markdown, "## {}\n") + "\n")
    write_csv(out / "report.csv", ranked)
    written = {"md": out / "report.md", "csv": out / "report.csv"}
    if data is not None:
        written["png"] = out / "curves.png"
        plot_curves(data, written["png"])
    print(render_tables(ranked_tables, render_text, "{}:"))
    print("\nwrote " + ", ".join(str(path) for path in written.values()))
    return {"runs": ranked, "tables": ranked_tables, "written": written, "curves": data}


def paired_report(args: argparse.Namespace) -> dict:
    """Compare the runs of ``args`` episode by episode, print the table and return the pairs and what was written."""
    runs = find_runs(args.paths)
    episodes = paired.read_paired([run.path for run in runs])
    pairs = paired.compare(run_names(runs), episodes)
    out = out_dir(args, runs)
    out.mkdir(parents=True, exist_ok=True)
    written = {"md": out / "paired.md", "csv": out / "paired.csv"}
    written["md"].write_text(paired_text(pairs, episodes[0].meta, runs, render_markdown) + "\n")
    paired.write_csv(written["csv"], pairs)
    print(paired_text(pairs, episodes[0].meta, runs, render_text))
    print("\nwrote " + ", ".join(str(path) for path in written.values()))
    return {"runs": runs, "pairs": pairs, "written": written}


def paired_text(pairs: list, meta: dict, runs: list, render) -> str:
    """The caption, the pairs' table through ``render`` and, where runs differ in overrides, which run set what."""
    parts = [paired.caption(pairs, meta), render(*paired.paired_rows(pairs, meta))]
    overrides = varying_overrides(runs)
    if overrides:
        legend = [[name, *(shorten(run.overrides.get(key, "-")) for key in overrides)]
                  for name, run in zip(run_names(runs), runs)]
        parts.append(render(["run", *overrides], legend))
    return "\n\n".join(parts)


def out_dir(args: argparse.Namespace, runs: list) -> Path:
    """``--out``, else the sweep directory when one was given, else ./report."""
    single_dir = len(args.paths) == 1 and len({run.path.parent for run in runs}) == 1 and len(runs) > 1
    return args.out or (Path(args.paths[0]) if single_dir else Path("report"))


def render_tables(ranked_tables: dict, render, heading: str) -> str:
    """Each table through ``render``, under ``heading`` (formatted with its dataset) when there are several."""
    parts = [render(*table_rows(runs)) for runs in ranked_tables.values()]
    if len(parts) > 1:
        parts = [heading.format(dataset) + "\n" + part for dataset, part in zip(ranked_tables, parts)]
    return "\n\n".join(parts)


def main(argv=None) -> None:
    """Entry point: one-line errors for bad paths, metrics or keys."""
    args = parse_args(argv)
    try:
        (paired_report if args.paired else report)(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"metarun-report: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
