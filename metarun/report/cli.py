"""The ``metarun-report`` command: rank runs by a metric, write the tables as text/Markdown/CSV, plot curves."""

import argparse
import sys
from pathlib import Path

from metarun.logging.table import render_markdown, render_text
from metarun.report.plots import curve_data, default_curves, plot_curves
from metarun.report.runs import find_runs
from metarun.report.table import table_rows, tables, write_csv


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="metarun-report",
        description="Compare metarun runs: ranked tables and learning curves, from run directories.",
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
    return parser.parse_args(argv)


def report(args: argparse.Namespace) -> dict:
    """Build the report for ``args``, print the tables and return what was written and plotted."""
    runs = find_runs(args.paths)
    ranked_tables = tables(runs, args.sort, args.descending)
    ranked = [run for members in ranked_tables.values() for run in members]
    single_dir = len(args.paths) == 1 and len({run.path.parent for run in runs}) == 1 and len(runs) > 1
    out = args.out or (Path(args.paths[0]) if single_dir else Path("report"))
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
        report(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"metarun-report: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
