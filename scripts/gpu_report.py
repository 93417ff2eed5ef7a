"""The report of ``scripts/gpu_check.sh``: OUT/report.md from what its phases left in OUT.

    python scripts/gpu_report.py OUT --start --device cuda|cpu [--quick] [--phases tests,bench,train,challenge]
    python scripts/gpu_report.py OUT

``--start`` records the check's settings and its environment (Python, torch, CUDA, the GPU) in ``check.json``;
every call then renders ``report.md`` from ``check.json``, ``phases.jsonl`` (one line per finished phase: its
name, exit code, seconds and limit), the CUDA tests' log, the benchmark's log and JSON lines, each training
run's ``runs/NAME/results.json`` and the challenge's (``runs/challenge/seedN`` and ``runs/challenge-ensemble``).
The check renders it after every phase, so a check stopped from outside still leaves the report of what it did;
rendering needs only the standard library (``--start`` imports torch).
"""

import argparse
import json
import math
import os
import platform
import re
from pathlib import Path

# the runs gpu_check.sh trains, in its order; the two MAML runs differ only in hardware.precision
RUNS = {"maml-fp32": "MAML, fp32", "maml-bf16": "MAML, bf16 autocast", "protonet": "ProtoNet, fp32"}
BF16, FP32 = "maml-bf16", "maml-fp32"
CHALLENGE = ("challenge", "challenge-ensemble")  # the challenge's phases: its sweep of seeds, then their ensemble
TARGET_POINTS = 0.5  # bf16's accuracy within this many points of fp32's
TIMED_OUT = (124, 137)  # timeout's exit codes: stopped at the limit, killed after the grace period
# pytest's last line, e.g. "3 passed, 1 skipped in 2.1s"
SUMMARY = re.compile(r"^=*\s*((\d+ \w+(, )?)+|no tests ran) in [\d.]+s")
TABLE = re.compile(r"(?:^\|.*\n?)+", re.M)  # consecutive markdown table rows
EXTRA = re.compile(r"^(?:eval|gpu-busy): .*$", re.M)  # the line bench.py prints for each of its extras


def environment() -> str:
    """Python, torch, CUDA and the GPU, as this interpreter sees them."""
    try:
        import torch
    except ImportError as err:
        return f"Python {platform.python_version()}; torch does not import ({err})"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device visible"
    return (f"GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or 'none'}, cuDNN {torch.backends.cudnn.version() or 'none'}, "
            f"{os.cpu_count()} CPUs")


def planned(phases: str) -> list:
    """The phase names of ``--phases`` (``train`` is one phase per run, ``challenge`` two), after the set-up."""
    chosen = phases.split(",")
    return ["setup", *(name for name in ("tests", "bench") if name in chosen), *(RUNS if "train" in chosen else []),
            *(CHALLENGE if "challenge" in chosen else ())]


def start(out: Path, device: str, quick: bool, phases: str) -> None:
    """Record the check's settings and environment in OUT/check.json."""
    check = {"device": device, "quick": quick, "phases": planned(phases), "environment": environment()}
    (out / "check.json").write_text(json.dumps(check, indent=1))


def status(phase: dict) -> str:
    """ok, failed (exit N) or timed out."""
    if phase["exit"] == 0:
        return "ok"
    if phase["exit"] in TIMED_OUT:
        return f"**timed out** at {phase['limit']} s"
    return f"**failed** (exit {phase['exit']})"


def phases_table(names: list, done: dict) -> str:
    """Markdown: each planned phase's status and time against its limit."""
    rows = ["| phase | status | seconds (limit) |", "|---|---|---:|"]
    for name in names:
        if name not in done:
            rows.append(f"| {name} | not run | |")
            continue
        phase = done[name]
        limit = f" ({phase['limit']})" if phase["limit"] else ""
        rows.append(f"| {name} | {status(phase)} | {phase['seconds']}{limit} |")
    return "\n".join(rows)


def lines_of(path: Path) -> list:
    """The lines of ``path``; none when it does not exist."""
    return path.read_text(errors="replace").splitlines() if path.is_file() else []


def tests_section(log: Path) -> str:
    """pytest's summary line (counts of passed, failed, skipped) and its FAILED/ERROR lines."""
    lines = lines_of(log)
    summaries = [line.strip("= ") for line in lines if SUMMARY.match(line)]
    problems = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = f"`{summaries[-1]}`" if summaries else "no pytest summary line in tests.log (see Failures)"
    return "\n".join([summary, *(f"- {line}" for line in problems)])


def bench_section(log: Path, jsonl: Path) -> str:
    """The last markdown table bench.py printed, the lines of its extras (evaluation, GPU-busy fraction) and how many
    JSON lines it wrote."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    tables, extras = TABLE.findall(text), "\n".join(f"- {line}" for line in EXTRA.findall(text))
    measured = len(lines_of(jsonl))
    where = f"{measured} JSON lines in bench.jsonl" if measured else "no bench.jsonl"
    head = tables[-1].rstrip() if tables else "no table in bench.log (see Failures)"
    return "\n\n".join(part for part in (head, extras, where) if part)


def training_section(out: Path, done: dict) -> str:
    """Markdown: test accuracy ± 95% CI, iterations and wall time per run, and bf16 against fp32."""
    rows, results = list(RESULTS_HEAD), {}
    for name, label in RUNS.items():
        path = out / "runs" / name / "results.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            rows.append(result_row(label, results[name]))
        elif name in done:
            rows.append(f"| {label} | {status(done[name])}, no results.json | | | |")
    return "\n".join([*rows, "", precision_gap(results)])


RESULTS_HEAD = ("| run | test accuracy % (± 95% CI) | episodes | iterations | wall s |", "|---|---:|---:|---:|---:|")


def result_row(label: str, results: dict) -> str:
    """A row of ``RESULTS_HEAD`` from a run's results.json (an evaluation's has no iterations or wall time)."""
    wall = f"{results['wall_s']:.0f}" if "wall_s" in results else ""
    return (f"| {label} | {100 * results['test/acc']:.2f} ± {100 * results['test/acc_ci95']:.2f} | "
            f"{results['test/episodes']} | {results.get('iterations', '')} | {wall} |")


def challenge_section(out: Path, done: dict) -> str:
    """Markdown: each seed's run of the challenge and their ensemble, with the sweep's wall time."""
    seeds = sorted((out / "runs" / "challenge").glob("seed*/results.json"), key=lambda p: int(p.parent.name[4:]))
    rows = [*RESULTS_HEAD, *(result_row(path.parent.name.replace("seed", "seed "), json.loads(path.read_text()))
                             for path in seeds)]
    ensemble = out / "runs" / CHALLENGE[1] / "results.json"
    if ensemble.is_file():
        rows.append(result_row(f"**ensemble of the {len(seeds)}**", json.loads(ensemble.read_text())))
    timing = ", ".join(f"{name} {status(done[name])} in {done[name]['seconds']} s" for name in CHALLENGE
                       if name in done)
    return "\n".join(rows) + f"\n\nPhases: {timing or 'not run'}."


def precision_gap(results: dict) -> str:
    """bf16 minus fp32 test accuracy in points, with the noise of the difference."""
    if BF16 not in results or FP32 not in results:
        return "bf16 − fp32: not available (a MAML run has no results)"
    bf16, fp32 = results[BF16], results[FP32]
    gap = 100 * (bf16["test/acc"] - fp32["test/acc"])
    noise = 100 * math.hypot(bf16["test/acc_ci95"], fp32["test/acc_ci95"])
    verdict = "within" if abs(gap) <= TARGET_POINTS else "outside"
    iterations = (f"both {fp32['iterations']} iterations" if bf16["iterations"] == fp32["iterations"] else
                  f"**unequal budgets**: fp32 {fp32['iterations']}, bf16 {bf16['iterations']} iterations")
    return (f"bf16 − fp32: **{gap:+.2f} points**, {verdict} the target of ±{TARGET_POINTS} (the difference's own "
            f"95% CI is ±{noise:.2f} points); same seed, {iterations}.")


def failures_section(out: Path, done: dict, lines: int = 20) -> str:
    """The last lines of the log of every phase that did not succeed."""
    parts = []
    for name, phase in done.items():
        if phase["exit"]:
            tail = "\n".join(lines_of(out / f"{name}.log")[-lines:]) or "(empty log)"
            parts.append(f"### {name}: {status(phase)}\n\n```\n{tail}\n```")
    return "\n\n".join(parts) or "none"


def render(out: Path) -> str:
    """The whole report."""
    check = json.loads((out / "check.json").read_text())
    done = {phase["phase"]: phase for phase in map(json.loads, lines_of(out / "phases.jsonl"))}
    budget = "quick (tiny: a dry run, not a measurement)" if check["quick"] else "full"
    sections = [
        "# metarun GPU check",
        f"{check['environment']}. Checked with `--device {check['device']}`, budgets {budget}; the phases took "
        f"{sum(phase['seconds'] for phase in done.values())} s.",
        "## Phases", phases_table(check["phases"], done),
        "## CUDA tests (`pytest -m cuda`)",
        tests_section(out / "tests.log") if "tests" in done else "not run",
        "## Benchmark (`scripts/bench.py`)",
        bench_section(out / "bench.log", out / "bench.jsonl") if "bench" in done else "not run",
        "## Training on the Omniglot subsets",
        "Meta-train on `images_background_small1` (rotations as new classes), meta-test 5-way 1-shot (15 queries) "
        "on the alphabets only `images_background_small2` has. Validation uses that same set, as the documentation's "
        "measurement does; it runs once, at the end, so no checkpoint is chosen on it. Each run's directory, with "
        "its `.hydra/overrides.yaml`, is `runs/NAME`.",
        training_section(out, done) if any(name in done for name in RUNS) else "not run",
        *(["## Omniglot's 5-alphabet challenge at GPU size",
           "`experiment=omniglot_challenge_5alphabets_gpu`, one run per seed (four at a time on the GPU), then their "
           "ensemble (`eval.ensemble`): within-alphabet 20-way 1-shot on the alphabets only `images_background_small2` "
           "has, drawers apart, with the preset's support copies. Each run's directory is `runs/challenge/seedN`.",
           challenge_section(out, done)] if CHALLENGE[0] in check["phases"] else []),
        "## Failures", failures_section(out, done),
    ]
    return "\n\n".join(sections) + "\n"


def main(argv=None) -> None:
    """Record the check's start when asked, then write OUT/report.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder gpu_check.sh writes (--out)")
    parser.add_argument("--start", action="store_true", help="record the settings below and the environment")
    parser.add_argument("--device", default="cuda", help="the device the check runs on")
    parser.add_argument("--quick", action="store_true", help="the check runs with tiny budgets")
    parser.add_argument("--phases", default="tests,bench,train", help="the phases the check runs (challenge too)")
    args = parser.parse_args(argv)
    if args.start:
        start(args.out, args.device, args.quick, args.phases)
    (args.out / "report.md").write_text(render(args.out))


if __name__ == "__main__":
    main()
