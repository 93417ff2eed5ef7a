"""The algorithm quality bar: every algorithm, 5-way 1-shot and 20-way 1-shot, on the real Omniglot subsets.

    python scripts/omniglot_subsets.py [--minutes 6] [--only maml,protonet] [--settings 5w1s,20w1s] [--jobs 2]
                                       [OVERRIDE ...]

Each run meta-trains on ``images_background_small1.zip`` (rotations as classes) and meta-tests on the
alphabets only ``images_background_small2.zip`` has, through the ``metarun`` command with the paper preset
named below, a wall-clock training budget (``train.max_minutes``) and one CPU thread. Validation runs once,
when the budget ends, so no checkpoint is chosen on the test alphabets. Prints one JSON line per run and a
Markdown table at the end; each run directory (``--out``, default ``outputs/omniglot_subsets``) keeps its
logs and ``results.json``. Trailing ``key=value`` overrides go to every run (e.g. ``hardware=gpu``).
``--jobs N`` runs N at once (one thread each; wall times then include the neighbours' contention).
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("METARUN_SHARED", REPO.parent / "shared")) / "data" / "omniglot"
SUBSETS = ["dataset.split=folders", "dataset.train=[images_background_small1.zip]",
           "dataset.val=[images_background_small2.zip]", "dataset.test=[images_background_small2.zip]",
           "dataset.rotations=true"]
MAMLPP = ["algo.multi_step_loss=true", "algo.learned_lrs=true", "algo.per_step_bn=true", "algo.msl_iterations=500",
          "optim.schedule=cosine", "optim.final_lr=0.0001"]
# Baseline(++): no paper preset on Omniglot; pre-training batches of 100 images (20 classes x 5), tested as the rest
BASELINE = ["dataset=omniglot", "model=conv4", "dataset.ways=20", "dataset.queries=4", "train.meta_batch_size=1",
            "eval.queries=15"]
# MetaOptNet-SVM: no paper preset on Omniglot; 5-way episodes with more training shots, as the paper trains
METAOPTNET = ["algo=metaoptnet_svm", "dataset=omniglot", "model=conv4", "dataset.ways=5", "dataset.shots=5",
              "dataset.queries=6", "train.meta_batch_size=4", "eval.shots=1", "eval.queries=15"]
# Meta-LSTM: the LSTM's cost grows with parameters x units^2 per update; 4 units and two updates at an initial
# input gate of 0.3 (the test_learning budget's), so that a CPU does a few hundred updates in 4 minutes
METALSTM = ["algo.hidden_size=4", "algo.inner_steps=2", "algo.test_inner_steps=2", "algo.inner_lr=0.3"]
# (algorithm, setting) -> overrides: the paper preset, with meta-batches cut so a CPU does hundreds of updates
RUNS = {
    ("maml", "5w1s"): ["experiment=maml_omniglot_5w1s", "train.meta_batch_size=8"],
    ("maml", "20w1s"): ["experiment=maml_omniglot_20w1s", "train.meta_batch_size=4"],
    ("fomaml", "5w1s"): ["experiment=maml_omniglot_5w1s", "algo=fomaml", "train.meta_batch_size=8"],
    ("fomaml", "20w1s"): ["experiment=maml_omniglot_20w1s", "algo=fomaml", "train.meta_batch_size=4"],
    ("mamlpp", "5w1s"): ["experiment=maml_omniglot_5w1s", "train.meta_batch_size=8", *MAMLPP],
    ("mamlpp", "20w1s"): ["experiment=maml_omniglot_20w1s", "train.meta_batch_size=4", *MAMLPP],
    ("anil", "5w1s"): ["experiment=maml_omniglot_5w1s", "algo=anil", "train.meta_batch_size=8"],
    ("anil", "20w1s"): ["experiment=maml_omniglot_20w1s", "algo=anil", "train.meta_batch_size=4"],
    ("metasgd", "5w1s"): ["experiment=metasgd_omniglot_5w1s", "train.meta_batch_size=8"],
    ("metasgd", "20w1s"): ["experiment=metasgd_omniglot_5w1s", "dataset.ways=20", "train.meta_batch_size=4"],
    ("reptile", "5w1s"): ["experiment=reptile_omniglot_5w1s"],
    ("reptile", "20w1s"): ["experiment=reptile_omniglot_5w1s", "dataset.ways=20"],
    ("protonet", "5w1s"): ["experiment=protonet_omniglot_5w1s"],
    ("protonet", "20w1s"): ["experiment=protonet_omniglot_5w1s", "eval.ways=20"],
    ("matchingnet", "5w1s"): ["experiment=matchingnet_omniglot_5w1s"],
    ("matchingnet", "20w1s"): ["experiment=matchingnet_omniglot_5w1s", "dataset.ways=20"],
    ("relationnet", "5w1s"): ["experiment=relationnet_omniglot_5w1s"],
    ("relationnet", "20w1s"): ["experiment=relationnet_omniglot_5w1s", "dataset.ways=20", "dataset.queries=10"],
    ("r2d2", "5w1s"): ["experiment=r2d2_omniglot_5w1s", "dataset.queries=5"],
    ("r2d2", "20w1s"): ["experiment=r2d2_omniglot_5w1s", "dataset.queries=5", "eval.ways=20"],
    ("metaoptnet_svm", "5w1s"): [*METAOPTNET, "eval.ways=5"],
    ("metaoptnet_svm", "20w1s"): [*METAOPTNET, "eval.ways=20"],
    ("metalstm", "5w1s"): ["experiment=metalstm_omniglot_5w1s", "train.meta_batch_size=8", *METALSTM],
    ("metalstm", "20w1s"): ["experiment=metalstm_omniglot_5w1s", "dataset.ways=20", "train.meta_batch_size=4", *METALSTM],
    ("imaml", "5w1s"): ["experiment=imaml_omniglot_5w1s", "train.meta_batch_size=8"],
    ("imaml", "20w1s"): ["experiment=imaml_omniglot_20w1s", "train.meta_batch_size=4"],
    ("baseline", "5w1s"): ["algo=baseline", *BASELINE, "eval.ways=5"],
    ("baseline", "20w1s"): ["algo=baseline", *BASELINE, "eval.ways=20"],
    ("baselinepp", "5w1s"): ["algo=baselinepp", *BASELINE, "eval.ways=5"],
    ("baselinepp", "20w1s"): ["algo=baselinepp", *BASELINE, "eval.ways=20"],
}
ALGORITHMS = list(dict.fromkeys(algo for algo, _ in RUNS))


def command(overrides: list, minutes: float, run_dir: Path, episodes: int) -> list:
    """The ``metarun`` command line of one run."""
    return [sys.executable, "-m", "metarun.runner.cli", f"dataset.root={DATA}", *SUBSETS, f"train.max_minutes={minutes}",
            "train.val_every=1000000", "train.checkpoint_every=1000000", "train.log_every=50",
            f"eval.episodes={episodes}", "hardware.num_threads=1", "logger.console=false",
            f"dataset.cache_dir={run_dir.parent / 'cache'}", *overrides,
            f"hydra.run.dir={run_dir}"]


def run(algo: str, setting: str, minutes: float, out: Path, episodes: int, extra: list = ()) -> dict:
    """Train and meta-test one cell of the table; its ``results.json`` plus the command line."""
    run_dir = out / f"{algo}_{setting}"
    cmd = command([*RUNS[algo, setting], *extra], minutes, run_dir, episodes)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.log", "w") as log:
        finished = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode:
        lines = [line for line in (run_dir / "stdout.log").read_text().splitlines()
                 if line.strip() and "HYDRA_FULL_ERROR" not in line]
        return {"algo": algo, "setting": setting, "error": lines[-1] if lines else f"exit code {finished.returncode}"}
    results = json.loads((run_dir / "results.json").read_text())
    return {"algo": algo, "setting": setting, "test/acc": results["test/acc"],
            "test/acc_ci95": results["test/acc_ci95"], "iterations": results["iterations"],
            "wall_s": results["wall_s"], "command": " ".join(["metarun", *cmd[3:-1]])}


def table(rows: list) -> str:
    """Markdown: algorithm × setting with test accuracy ± 95% CI, updates done and wall time."""
    lines = ["| algorithm | setting | test accuracy % (± 95% CI) | updates | wall (train + test) |",
             "|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['algo']} | {row['setting']} | failed: {row['error']} | | |")
            continue
        lines.append(f"| {row['algo']} | {row['setting']} | {100 * row['test/acc']:.1f} ± "
                     f"{100 * row['test/acc_ci95']:.1f} | {row['iterations']} | {row['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    """Run the requested cells in order and print their JSON lines and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per run")
    parser.add_argument("--only", default=None, help="comma-separated algorithms (default: all)")
    parser.add_argument("--settings", default="5w1s,20w1s")
    parser.add_argument("--episodes", type=int, default=600, help="meta-test episodes per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "omniglot_subsets")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    algos = args.only.split(",") if args.only else ALGORITHMS
    cells = [(algo, setting) for setting in args.settings.split(",") for algo in algos]
    unknown = [cell for cell in cells if cell not in RUNS]
    if unknown:
        sys.exit(f"no run for {' '.join(unknown[0])}; algorithms: {', '.join(ALGORITHMS)}; "
                 "settings: 5w1s, 20w1s")

    def one(cell):
        row = run(*cell, args.minutes, args.out.resolve(), args.episodes, args.overrides)
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, cells))
    markdown = table(rows)
    print(markdown)
    (args.out / "table.md").write_text(markdown + "\n")
    if any("error" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
