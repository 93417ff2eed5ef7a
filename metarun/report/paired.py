"""Paired comparison of runs scored on the same test episodes (their test_episodes.npz): for each pair, the mean
difference B − A with its 95% CI, the paired t-test and the Wilcoxon signed-rank test, Holm–Bonferroni-corrected
over the pairs of the table.

Pairing removes the spread between episodes (some tasks are hard for every algorithm), so a difference far inside
two runs' overlapping CIs can still be told apart from noise.
"""

import csv
import math
from dataclasses import astuple, dataclass, fields
from itertools import combinations
from pathlib import Path

import numpy as np

from metarun.logging.episodes import FILE_NAME, Episodes, read_episodes
from metarun.logging.table import is_accuracy, metric_text

ALPHA = 0.05  # a pair is marked significant when its Holm-corrected t-test p-value is below this
# what fixes the episodes a run was scored on, each with the key that sets it (None: no override makes them alike)
EPISODE_FIELDS = {"dataset": None, "split": None, "metric": None, "seed": "eval.seed", "ways": "eval.ways",
                  "shots": "eval.shots", "queries": "eval.queries"}


@dataclass(frozen=True)
class Pair:
    """The paired comparison of run B against run A (raw values: accuracies as fractions)."""

    run_a: str
    run_b: str
    episodes: int
    mean_a: float
    mean_b: float
    diff: float  # mean of B − A over the episodes
    ci_low: float  # 95% CI of diff (Student t, episodes − 1 degrees of freedom)
    ci_high: float
    p_ttest: float  # paired t-test, two-sided
    p_wilcoxon: float  # Wilcoxon signed-rank, two-sided, episodes with no difference dropped (scipy's default)
    p_holm: float  # p_ttest, Holm–Bonferroni-corrected over the table's pairs

    @property
    def significant(self) -> bool:
        """Whether the Holm-corrected t-test rejects "no difference" at level ALPHA."""
        return self.p_holm < ALPHA


def scipy_stats():
    """``scipy.stats``, imported here: only --paired needs it.

    Raises:
        ImportError: scipy is not installed; the message says how to install it.
    """
    try:
        from scipy import stats
    except ImportError:
        raise ImportError('metarun-report --paired needs scipy: pip install "metarun[report]"') from None
    return stats


def read_paired(run_dirs: list) -> list:
    """Each run's ``Episodes``, rows sorted by episode index, once every run is known to share the first's episodes.

    Raises:
        ValueError: fewer than two runs, a run without a readable test_episodes.npz, episodes that differ (named
            with the two runs and the field), or an episode whose metric is not finite.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"--paired compares two or more runs; {run_dirs[0]} is the only one")
    episodes = [sorted_by_index(read_episodes(Path(run) / FILE_NAME)) for run in run_dirs]
    for run, other in zip(run_dirs[1:], episodes[1:]):
        check_same_episodes(run_dirs[0], episodes[0], run, other)
    for run, scored in zip(run_dirs, episodes):
        check_testable(run, scored)
    return episodes


def sorted_by_index(episodes: Episodes) -> Episodes:
    """``episodes`` with its rows in episode order: runs gathered in another order still pair row by row."""
    order = np.argsort(episodes.index, kind="stable")
    return Episodes(episodes.index[order], episodes.metric[order], episodes.curve[order], episodes.meta)


def check_same_episodes(run_a: Path, a: Episodes, run_b: Path, b: Episodes) -> None:
    """Refuse runs ``run_a`` and ``run_b`` unless they scored the same episodes with the same metric."""
    for name, key in EPISODE_FIELDS.items():
        if a.meta[name] != b.meta[name]:
            fix = reevaluate_with(run_b, key, a.meta[name]) if key else f"only runs of the same {name} can be paired"
            raise ValueError(f"{run_a} and {run_b} were not scored on the same episodes: {key or name} "
                             f"{a.meta[name]} vs {b.meta[name]}; {fix}")
    if not np.array_equal(a.index, b.index):
        counts = f"eval.episodes {a.index.size} vs {b.index.size}" if a.index.size != b.index.size else \
            "another set of episode indices"
        raise ValueError(f"{run_a} and {run_b} were not scored on the same episodes: {counts}; "
                         f"{reevaluate_with(run_b, 'eval.episodes', a.index.size)}")


def reevaluate_with(run: Path, key: str, value) -> str:
    """The fix for a run scored on other episodes: its re-evaluation with ``key=value``."""
    return f"re-evaluate one with {key}={value} (metarun mode=eval checkpoint={run}/checkpoints/best.pt {key}={value})"


def check_testable(run: Path, episodes: Episodes) -> None:
    """Refuse a run with fewer than two episodes or an episode whose metric is NaN or infinite (a diverged inner
    loop): neither test has a value for it."""
    if episodes.index.size < 2:
        raise ValueError(f"{run} scored {episodes.index.size} episode(s); paired tests need at least 2 "
                         "(re-evaluate with a larger eval.episodes)")
    bad = int((~np.isfinite(episodes.metric)).sum())
    if bad:
        raise ValueError(f"{run} has {bad} of {episodes.index.size} test episodes whose {episodes.meta['metric']} "
                         "is not finite (inner loops that diverged); paired tests need every episode's value")


def paired_test(a: np.ndarray, b: np.ndarray, stats) -> dict:
    """Mean difference ``b − a`` with its 95% CI (Student t, n − 1 df), paired t-test and Wilcoxon p-values.

    Identical episodes (all differences 0) give a CI of [0, 0] and p-values of 1, where scipy's t-test is 0/0 and
    older Wilcoxons raise.
    """
    diff = b - a
    mean = float(diff.mean())
    if not diff.any():
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_ttest": 1.0, "p_wilcoxon": 1.0}
    half = float(stats.t.ppf(0.975, diff.size - 1)) * float(diff.std(ddof=1)) / math.sqrt(diff.size)
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half,
            "p_ttest": float(stats.ttest_rel(b, a).pvalue), "p_wilcoxon": float(stats.wilcoxon(diff).pvalue)}


def holm(pvalues: list) -> list:
    """Holm–Bonferroni-adjusted ``pvalues``, in their order: the k-th smallest (from 0) times (m − k), kept at least
    the one before it, at most 1."""
    adjusted, floor = [0.0] * len(pvalues), 0.0
    for k, i in enumerate(sorted(range(len(pvalues)), key=lambda j: pvalues[j])):
        floor = max(floor, min(1.0, (len(pvalues) - k) * pvalues[i]))
        adjusted[i] = floor
    return adjusted


def compare(names: list, episodes: list) -> list:
    """A ``Pair`` for every two runs (``names[i]`` scored ``episodes[i]``, all on the same episodes), in order."""
    stats = scipy_stats()
    tests = [(i, j, paired_test(episodes[i].metric, episodes[j].metric, stats))
             for i, j in combinations(range(len(names)), 2)]
    adjusted = holm([test["p_ttest"] for _, _, test in tests])
    return [Pair(names[i], names[j], episodes[i].index.size, float(episodes[i].metric.mean()),
                 float(episodes[j].metric.mean()), **test, p_holm=p_holm)
            for (i, j, test), p_holm in zip(tests, adjusted)]


def paired_rows(pairs: list, meta: dict) -> tuple:
    """Header and rows for the terminal and Markdown: means and differences as the report prints its metric
    (accuracies in percent, differences in points), p-values to 3 significant digits."""
    key = f"{meta['split']}/{meta['metric']}"
    header = ["run A", "run B", "episodes", "mean A", "mean B", "B - A", "95% CI of B - A", "t-test p",
              "Wilcoxon p", "Holm p", "sig"]
    rows = [[pair.run_a, pair.run_b, pair.episodes, metric_text(key, pair.mean_a), metric_text(key, pair.mean_b),
             signed(key, pair.diff), f"[{signed(key, pair.ci_low)}, {signed(key, pair.ci_high)}]",
             f"{pair.p_ttest:.3g}", f"{pair.p_wilcoxon:.3g}", f"{pair.p_holm:.3g}", "*" if pair.significant else ""]
            for pair in pairs]
    return header, rows


def signed(key: str, value: float) -> str:
    """A difference of the metric ``key`` with its sign: ``+1.23%`` (points) for an accuracy, else ``+0.0123``."""
    return f"{100 * value:+.2f}%" if is_accuracy(key) else f"{value:+.4g}"


def caption(pairs: list, meta: dict) -> str:
    """The line above the table: the episodes compared and what each column's test is."""
    sizes = ", ".join(f"{name} {meta[name]}" for name in ("ways", "shots", "queries") if meta[name] is not None)
    return (f"{meta['split']}/{meta['metric']} of {meta['dataset']}, paired over the same {pairs[0].episodes} "
            f"episodes (eval.seed {meta['seed']}{', ' + sizes if sizes else ''}). 95% CI: Student t, n-1 df; "
            f"p-values two-sided; Holm p: the paired t-test's, Holm-Bonferroni-corrected over the {len(pairs)} "
            f"pair{'s' if len(pairs) > 1 else ''}; * Holm p < {ALPHA}.")


def write_csv(path: Path, pairs: list) -> None:
    """Every pair's raw figures (accuracies as fractions), one row per pair."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([field.name for field in fields(Pair)] + ["significant"])
        writer.writerows([*astuple(pair), pair.significant] for pair in pairs)
