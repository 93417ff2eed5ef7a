"""Plain tables for the console and Markdown: final metrics as ``mean ± ci95`` next to their names, accuracies
in percent as papers print them (``results.json`` and ``metrics.jsonl`` keep fractions)."""

CI_SUFFIX = "_ci95"


def metrics_with_ci(values: dict) -> dict:
    """The ``split/name`` metrics of ``values`` that carry a ``_ci95`` companion, as ``mean ± ci95`` text."""
    return {key: metric_text(key, value, values[key + CI_SUFFIX]) for key, value in values.items()
            if "/" in key and key + CI_SUFFIX in values}


def is_accuracy(key: str) -> bool:
    """Whether the metric ``key`` (``split/name``) is an accuracy, a fraction shown in percent."""
    return key.rsplit("/", 1)[-1].startswith("acc")


def metric_text(key: str, mean, ci95=None) -> str:
    """``mean ± ci95`` of the metric ``key``: ``58.49 ± 1.23%`` for an accuracy, else as ``format_mean_ci``."""
    if is_accuracy(key) and mean is not None:
        return f"{100 * mean:.2f}%" if ci95 is None else f"{100 * mean:.2f} ± {100 * ci95:.2f}%"
    return format_mean_ci(mean, ci95)


def format_mean_ci(mean, ci95) -> str:
    """``0.5123 ± 0.0310`` (4 significant digits; a missing value or CI prints as ``-`` / no ``±``)."""
    if mean is None:
        return "-"
    return f"{mean:.4g}" if ci95 is None else f"{mean:.4g} ± {ci95:.2g}"


def render_text(header: list, rows: list) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(header: list, rows: list) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    def line(row):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])
