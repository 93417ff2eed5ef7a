"""Per-episode results (test_episodes.npz) and metarun-report --paired: the file's round trip and refusals, the
statistics against hand computations, and the command on run directories written here."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from metarun.logging.episodes import FILE_NAME, read_episodes, write_episodes
from metarun.report.paired import compare, holm, paired_test, read_paired, scipy_stats
from tests.report.conftest import report_of, write_run

stats = pytest.importorskip("scipy.stats", reason="the report extra (scipy) is not installed")

EPISODE = {"seed": 0, "split": "test", "ways": 5, "shots": 1, "queries": 15, "metric": "acc", "dataset": "omniglot"}


def scored_run(path, algo, accuracies, order=None, **episode):
    """A finished Omniglot run directory with its test_episodes.npz: episode i scored ``accuracies[i]`` (rows
    written in ``order``, default 0, 1, ...), its curve rising to it over two inner steps."""
    write_run(path, [f"algo={algo}"], "omniglot", "acc", float(np.mean(accuracies)))
    order = np.arange(len(accuracies)) if order is None else np.asarray(order)
    final = np.asarray(accuracies, dtype=np.float64)[order]
    curves = np.stack([0.2 * np.ones_like(final), (0.2 + final) / 2, final], axis=1)
    write_episodes(path / FILE_NAME, curves, indices=order, algo=algo, **{**EPISODE, **episode})
    return path


def test_episodes_round_trip_through_a_plain_numpy_load(tmp_path):
    curves = torch.tensor([[0.2, 0.5, 0.6], [0.2, 0.7, 0.8]], dtype=torch.float32)
    write_episodes(tmp_path / FILE_NAME, curves, indices=range(2), algo="maml", **EPISODE)
    episodes = read_episodes(tmp_path / FILE_NAME)
    assert episodes.index.dtype == np.int64 and episodes.index.tolist() == [0, 1]
    assert episodes.curve.dtype == np.float64 and np.array_equal(episodes.curve, curves.double().numpy())
    assert np.array_equal(episodes.metric, curves[:, -1].double().numpy())
    assert episodes.meta == {"format": 1, "algo": "maml", **EPISODE}
    with np.load(tmp_path / FILE_NAME, allow_pickle=False) as data:  # no metarun needed to read it
        assert sorted(data.files) == ["curve", "index", "meta", "metric"]
        assert json.loads(data["meta"].item())["seed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left beside it


def test_write_refuses_curves_without_a_row_per_index(tmp_path):
    with pytest.raises(ValueError, match=r"curves of shape \[3\] need to be \[episodes, steps\]"):
        write_episodes(tmp_path / FILE_NAME, np.ones(3), indices=range(3), algo="maml", **EPISODE)
    with pytest.raises(ValueError, match="indices repeat an episode"):
        write_episodes(tmp_path / FILE_NAME, np.ones((2, 2)), indices=[1, 1], algo="maml", **EPISODE)


def foreign_npz(path, **entries):
    """An npz another tool wrote: ``entries`` as they are."""
    with open(path, "wb") as file:
        np.savez(file, **entries)


class WritesMarker:
    """What a hostile file pickles into an entry: loading it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_file_whose_entries_are_pickles_is_refused_and_runs_nothing(tmp_path):
    path, marker = tmp_path / FILE_NAME, tmp_path / "marker"
    meta = np.empty((), dtype=object)
    meta[()] = WritesMarker(marker)  # an object array: np.savez pickles it
    foreign_npz(path, index=np.arange(2), curve=np.ones((2, 2)), metric=np.ones(2), meta=meta)
    with pytest.raises(ValueError, match=r"cannot read .*\.npz \(ValueError: Object arrays cannot be loaded"):
        read_episodes(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as data:  # the control: a trusting load does run it
        data["meta"]
    assert marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_text("not an archive"), "is not a NumPy .npz archive"),
    (lambda path: path.write_bytes(path.read_bytes()[:200]), "is not a NumPy .npz archive"),
    (lambda path: foreign_npz(path, scores=np.ones(3)), "KeyError: 'index is not a file in the archive'"),
    (lambda path: foreign_npz(path, index=np.arange(2), curve=np.ones((2, 2)), metric=np.ones(2),
                              meta=np.array(json.dumps({"format": 2}))), r"not a metarun per-episode file of format 1 "
                                                                        r"\(meta.format is 2\)"),
    (lambda path: foreign_npz(path, index=np.arange(2), curve=np.ones((3, 2)), metric=np.ones(3),
                              meta=np.array(json.dumps({"format": 1, "algo": "maml", **EPISODE}))),
     r"curve has shape \[3, 2\] for 2 episodes"),
    (lambda path: path.unlink(), "has no test_episodes.npz"),
])
def test_a_corrupt_foreign_or_missing_file_is_one_line_naming_it_and_the_fix(tmp_path, damage, message):
    path = tmp_path / FILE_NAME
    write_episodes(path, np.ones((2, 2)), indices=range(2), algo="maml", **EPISODE)
    damage(path)
    with pytest.raises(ValueError, match=message) as error:
        read_episodes(path)
    text = str(error.value)
    assert "\n" not in text and str(tmp_path) in text
    assert f"metarun mode=eval checkpoint={tmp_path}/checkpoints/best.pt" in text


def test_paired_statistics_match_the_formulas_by_hand():
    a, b = np.array([0.5, 0.6, 0.7]), np.array([0.6, 0.8, 1.1])
    diff = b - a  # 0.1, 0.2, 0.4
    n, mean = 3, diff.sum() / 3
    sd = math.sqrt(((diff - mean) ** 2).sum() / (n - 1))
    t = mean / (sd / math.sqrt(n))
    # Student t with 2 degrees of freedom: P(|T| > t) = 1 − t/√(2 + t²), so its 97.5% quantile solves
    # t/√(2 + t²) = 0.95
    p_two_sided = 1 - abs(t) / math.sqrt(2 + t * t)
    quantile = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))
    result = paired_test(a, b, scipy_stats())
    assert result["diff"] == pytest.approx(mean)
    assert result["ci_low"] == pytest.approx(mean - quantile * sd / math.sqrt(n))
    assert result["ci_high"] == pytest.approx(mean + quantile * sd / math.sqrt(n))
    assert result["p_ttest"] == pytest.approx(p_two_sided)
    # Wilcoxon, exact: of the 2³ equally likely sign patterns, one puts every rank on the positive side and one on
    # the negative, the two as extreme as all three positive differences
    assert result["p_wilcoxon"] == pytest.approx(2 / 8)


def test_holm_correction_by_hand():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04, then non-decreasing: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # 2 × 0.5 = 1, and no p-value above 1


def test_identical_runs_differ_by_zero_with_p_values_of_one_and_nothing_marked(tmp_path):
    accuracies = [0.6, 0.8, 0.8, 0.4, 1.0]
    runs = [scored_run(tmp_path / name, "maml", accuracies) for name in ("a", "b")]
    (pair,) = compare(["a", "b"], read_paired(runs))
    assert (pair.diff, pair.ci_low, pair.ci_high) == (0.0, 0.0, 0.0)
    assert (pair.p_ttest, pair.p_wilcoxon, pair.p_holm, pair.significant) == (1.0, 1.0, 1.0, False)


def test_rows_written_in_another_order_pair_by_episode_index(tmp_path):
    accuracies = [0.2, 0.4, 0.6, 0.8]
    a = scored_run(tmp_path / "a", "maml", accuracies)
    b = scored_run(tmp_path / "b", "maml", accuracies, order=[3, 1, 0, 2])
    (pair,) = compare(["a", "b"], read_paired([a, b]))
    assert pair.diff == 0.0 and pair.p_ttest == 1.0


@pytest.mark.parametrize("episode, message", [
    ({"seed": 1}, "eval.seed 0 vs 1; re-evaluate one with eval.seed=0"),
    ({"shots": 5}, "eval.shots 1 vs 5; re-evaluate one with eval.shots=1"),
    ({"dataset": "mini_imagenet"}, "dataset omniglot vs mini_imagenet; only runs of the same dataset can be paired"),
])
def test_runs_scored_on_other_episodes_are_refused_naming_both_and_the_field(tmp_path, episode, message):
    a = scored_run(tmp_path / "a", "maml", [0.5, 0.6, 0.7])
    b = scored_run(tmp_path / "b", "fomaml", [0.5, 0.6, 0.7], **episode)
    with pytest.raises(ValueError, match=f"^{a} and {b} were not scored on the same episodes: {message}") as error:
        read_paired([a, b])
    assert "\n" not in str(error.value)


def test_runs_scored_on_another_number_of_episodes_are_refused(tmp_path):
    a = scored_run(tmp_path / "a", "maml", [0.5, 0.6, 0.7])
    b = scored_run(tmp_path / "b", "fomaml", [0.5, 0.6])
    with pytest.raises(ValueError, match="eval.episodes 3 vs 2; re-evaluate one with eval.episodes=3"):
        read_paired([a, b])


def test_an_episode_that_diverged_is_refused_by_name(tmp_path):
    a = scored_run(tmp_path / "a", "maml", [0.5, 0.6, 0.7])
    b = scored_run(tmp_path / "b", "fomaml", [0.5, float("nan"), 0.7])
    with pytest.raises(ValueError, match=f"{b} has 1 of 3 test episodes whose acc is not finite"):
        read_paired([a, b])


def test_metarun_report_paired_prints_and_writes_the_table(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, size=40)
    sweep, scores = tmp_path / "sweep", []
    for job, (algo, shift) in enumerate([("maml", 0.0), ("fomaml", 0.0), ("protonet", 0.1)]):
        scores.append(base + shift + (rng.normal(0, 0.01, size=40) if job else 0))
        scored_run(sweep / f"{job}_algo={algo}", algo, scores[-1])
    out = subprocess.run([sys.executable, "-m", "metarun.report.cli", "--paired", str(sweep), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    caption, _, header, rule, *rows = out.stdout.splitlines()
    assert caption.startswith("test/acc of omniglot, paired over the same 40 episodes (eval.seed 0, ways 5, shots 1")
    assert "Holm p: the paired t-test's, Holm-Bonferroni-corrected over the 3 pairs; * Holm p < 0.05" in caption
    assert header.split("  ")[:3] == ["run A", "run B", "episodes"] and "Wilcoxon p" in header
    cells = [row.split() for row in rows[:3]]
    assert [row[:3] for row in cells] == [["0", "1", "40"], ["0", "2", "40"], ["1", "2", "40"]]
    assert cells[0][-1] != "*" and cells[1][-1] == cells[2][-1] == "*"  # the same algorithm twice, then a 10-point gap
    assert cells[1][3:6] == [f"{100 * scores[0].mean():.2f}%", f"{100 * scores[2].mean():.2f}%",
                             f"{100 * (scores[2] - scores[0]).mean():+.2f}%"]
    assert rows[4:8] == ["run  algo", "---  --------", "0    maml", "1    fomaml"]

    with open(tmp_path / "paired.csv", newline="") as file:
        written = list(csv.DictReader(file))
    assert [(row["run_a"], row["run_b"]) for row in written] == [("0", "1"), ("0", "2"), ("1", "2")]
    assert float(written[1]["diff"]) == pytest.approx(0.1, abs=0.01) and written[1]["significant"] == "True"
    p_values = [float(row["p_ttest"]) for row in written]
    assert [float(row["p_holm"]) for row in written] == pytest.approx(holm(p_values))
    markdown = (tmp_path / "paired.md").read_text().splitlines()
    assert markdown[2].startswith("| run A | run B | episodes |") and markdown[4].startswith("| 0 | 1 | 40 |")


def test_a_run_without_per_episode_results_is_one_line_saying_to_re_evaluate_it(tmp_path, capsys):
    a = scored_run(tmp_path / "a", "maml", [0.5, 0.6, 0.7])
    b = tmp_path / "b"
    write_run(b, ["algo=fomaml"], "omniglot", "acc", 0.6)  # a run of a metarun without per-episode results
    assert report_of("--paired", a, b, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == (f"metarun-report: error: {b} has no test_episodes.npz; re-evaluate the run with a metarun version "
                   f"that writes per-episode results (metarun mode=eval checkpoint={b}/checkpoints/best.pt), then "
                   "compare the run directory it writes\n")
    assert not (tmp_path / "out").exists()


def test_runs_on_other_episodes_are_a_one_line_cli_error(tmp_path, capsys):
    a = scored_run(tmp_path / "a", "maml", [0.5, 0.6, 0.7])
    b = scored_run(tmp_path / "b", "fomaml", [0.5, 0.6, 0.7], seed=3)
    assert report_of("--paired", a, b, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{a} and {b} were not scored on the same episodes: eval.seed 0 vs 3" in err


def test_without_scipy_the_cli_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    runs = [scored_run(tmp_path / name, "maml", [0.5, 0.6, 0.7]) for name in ("a", "b")]
    monkeypatch.setitem(sys.modules, "scipy", None)  # what an import of an absent package raises
    assert report_of("--paired", *runs, "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == ('metarun-report: error: metarun-report --paired needs scipy: '
                                       'pip install "metarun[report]"\n')


def test_ranking_options_are_refused_with_paired(tmp_path, capsys):
    assert report_of("--paired", tmp_path, "--sort", "test/acc") == 2
    assert "--paired takes run directories and --out only; drop --sort" in capsys.readouterr().err


def test_job_numbers_two_sweeps_share_are_replaced_by_paths(tmp_path, capsys):
    runs = [scored_run(tmp_path / sweep / "0_algo=maml", "maml", [0.5, 0.6, 0.7]) for sweep in ("s1", "s2")]
    assert report_of("--paired", *runs, "--out", tmp_path / "out") == 0
    row = capsys.readouterr().out.splitlines()[4]
    assert row.split()[:2] == [str(runs[0]), str(runs[1])]
