"""The ``metarun-report`` command: rank runs by a metric, write the table as text/Markdown/CSV, plot curves."""

import argparse
import sys
from pathlib import Path

from metarun.logging.table import render_markdown, render_text
from metarun.report.plots import curve_data, default_curves, plot_curves
from metarun.report.runs import find_runs
from metarun.report.table import metric_keys, rank, table_rows, varying_overrides, write_csv


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="metarun-report", description="Compare metarun runs: a ranked table and learning curves, from run directories.")
    parser.add_argument("paths", nargs="+", help="a sweep directory (outputs/multirun/...) or run directories")
    parser.add_argument("--sort", help="metric to rank by (default: the first test metric, e.g. test/mse)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--ascending", dest="descending", action="store_false", default=None,
                           help="smallest first (default for mse/loss/error)")
    direction.add_argument("--descending", dest="descending", action="store_true", help="largest first (default for acc)")
    parser.add_argument("--group-by", help="an override or config key: one curve per value (e.g. algo)")
    parser.add_argument("--curves", help="comma-separated metrics to plot (default: train/loss and the validation metric)")
    parser.add_argument("--out", type=Path,
                        help="where report.md, report.csv, curves.png go (default: the sweep directory, or ./report)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return parser.parse_args(argv)


def report(args: argparse.Namespace) -> dict:
    """Build the report for ``args``, print the table and return what was written and plotted."""
    runs = find_runs(args.paths)
    metrics = metric_keys(runs)
    ranked = rank(runs, args.sort or (metrics[0] if metrics else None), args.descending)
    overrides = varying_overrides(ranked)
    header, rows = table_rows(ranked, overrides, metrics)
    single_dir = len(args.paths) == 1 and len({run.path.parent for run in runs}) == 1 and len(runs) > 1
    out = args.out or (Path(args.paths[0]) if single_dir else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render_markdown(header, rows) + "\n")
    write_csv(out / "report.csv", ranked, overrides)
    written = {"md": out / "report.md", "csv": out / "report.csv"}
    data = None
    if not args.no_plot:
        data = curve_data(ranked, args.curves.split(",") if args.curves else default_curves(ranked), args.group_by)
        written["png"] = out / "curves.png"
        plot_curves(data, written["png"])
    print(render_text(header, rows))
    print("\nwrote " + ", ".join(str(path) for path in written.values()))
    return {"runs": ranked, "written": written, "curves": data}


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
