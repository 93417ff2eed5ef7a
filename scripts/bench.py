"""Meta-training throughput (tasks/s) and peak memory: metarun's training step against the packages users pick instead.

    python scripts/bench.py [--quick] [--device cpu|cuda] [--threads 1|N|all] [--settings NAME,...]
                            [--learn2learn DIR] [--max-seconds-per-setting S] [--out FILE]

Each measurement is one full meta-step repeated (forward, backward, Adam step) on a fixed meta-batch of
synthetic random images of the setting's shape, made on the device (the sampler's cost is not counted; see
``scripts/bench_data.py`` for that). Settings, the papers' protocols:
  * maml-omniglot-5w1s: MAML (Finn et al., 2017) second order, 5-way 1-shot, 15 queries, 28x28, Conv-4 of 64
    channels with MAML's stride-2 convolutions (no max-pool), meta-batch 32, 1 inner step at 0.4.
  * maml-omniglot-20w1s: as above, 20-way, meta-batch 16, 5 inner steps at 0.1.
  * maml-miniimagenet-5w1s: 5-way 1-shot, 15 queries, 84x84 RGB, Conv-4 of width 32 with max-pool, meta-batch
    4, 5 inner steps at 0.01.
  * imaml-omniglot-5w1s: iMAML-GD (Rajeswaran et al., 2019, table 2), 5-way 1-shot, 15 queries, MAML's Omniglot
    Conv-4 (64 channels, stride-2), 16 gradient steps at 0.1 on the proximal problem with lam = 2, 5 CG
    iterations for the implicit meta-gradient, meta-batch 16 (torchopt's example's).
  * protonet-omniglot-60w1s: ProtoNet (Snell et al., 2017), 60-way 1-shot, 5 queries, max-pool Conv-4 of 64
    channels without a head, one episode per meta-step.
  * protonet-miniimagenet-5w5s: ProtoNet, 5-way 5-shot, 15 queries, ResNet-12, meta-batch 2. On the CPU its
    widths are quartered (16-40-80-160; the full network takes about a minute per task on one core); the
    ``network`` field of each line says which ran.
Every network uses batch statistics in training (batch norm in train mode) and starts from the same seeded
weights in every implementation.

Implementations, in the same process:
  * metarun-<mapping> for each mapping ``hardware.task_parallel=auto`` chooses between on the device (vmap, loop,
    and on a CPU with several cores threads): ``metarun.runner.train.meta_step`` (``task_parallel.meta_backward`` over
    the algorithm's real ``meta_loss``, then the fused Adam step) with metarun's own networks, as training runs
    it, on the intra-op threads ``hardware.num_threads``
    gives (``--threads N``: N; ``all``: auto, sized from the model; the threads mapping runs one per task worker).
  * metarun-auto: the mapping ``task_parallel.tune`` picks, in wall time as training picks it (its timing is not
    counted; the line says what it chose, what the timing cost, or why nothing was timed). metarun-loop-checkpoint (MAML): ``algo.checkpoint_inner=true``.
  * CUDA only: metarun-auto-bf16 (``hardware.precision=bf16``) and metarun-compile (``hardware.compile=true``,
    in the mapping auto chose; a note line with the error when torch.compile fails).
  * The peers, each with its own usual model code: an ``nn.Sequential`` Conv-4 of ``nn.Conv2d`` and
    ``nn.BatchNorm2d`` (default running statistics, train mode; iMAML's peers without running statistics, as
    their code has it), or a standard ResNet-12 module.
    MAML: plain (a hand-written loop over tasks: inner steps with ``torch.autograd.grad(create_graph=True)``
    and ``torch.func.functional_call`` with the fast weights, ``backward()`` per task), learn2learn
    (``MAML(model).clone()`` and ``adapt`` per task, as its examples), higher (``innerloop_ctx``) and torchopt
    (``MetaSGD`` with ``extract_state_dict``/``recover_state_dict`` per task and one backward of the mean
    query loss, as its MAML example). iMAML: plain (its authors' code, aravindr93/imaml_dev: inner SGD steps with
    ``torch.autograd.grad`` on fast weights through ``functional_call``, Hessian-vector products by double
    backward on flat vectors, CG by hand) and torchopt (an ``ImplicitMetaGradientModule`` per task as its
    examples/iMAML/imaml_omniglot.py, one backward of the mean query loss). Both solve (I + H/lam) g = query
    gradient with exactly ``cg_steps`` CG iterations from zero as metarun does: no early stop, and torchopt's
    ``solve_cg`` where its example uses ``solve_normal_cg`` (CG on the normal equations, twice the
    Hessian-vector products per iteration for the same symmetric system). ProtoNet: plain, the paper's code
    (jakesnell/prototypical-networks): one forward of support and query together, so batch norm sees both sets
    at once where metarun embeds them apart.
  ``pip install -e ".[bench]"`` installs higher and torchopt. learn2learn 0.2.0 does not build on Python
  3.11; its MAML is pure Python and loads from the extracted sdist (``--learn2learn DIR``, default
  ``$METARUN_L2L``; else an installed learn2learn). A missing peer is a note line.

Timing: warm-up steps (peak memory is taken over them), then rounds that run every implementation once in turn,
the fastest round counting (CUDA synchronised around each step); rounds stop early once they have taken
``--max-seconds-per-setting`` and every implementation has 2 (default 10 s on CUDA: a full run took 2.3
minutes on an H200, most of it torch.compile). With one CPU thread (``--threads 1``) a step is timed in the
process's CPU time (``clock: process``; all its threads', so the threads mapping's workers count in full), which
leaves out the time other work on a shared machine holds the core. Otherwise (``--threads all``, the default:
the peers on torch's default intra-op threads, metarun as ``hardware.num_threads=auto`` sizes them) in wall
time (``clock: wall``). ``--threads N`` also confines the process to N cores, so metarun's threads mapping gets
no more cores than the peers' threads. ``threads`` in a line is the intra-op thread count it ran with.

Prints one JSON line per measurement (``impl, algo, setting, device, network, tasks_per_s, peak_mem_mb,
threads, clock, best_peer, vs_best_peer, ...``; ``vs_best_peer`` is the speed relative to the fastest peer),
one note line per missing peer and setting, and a markdown table; ``--out FILE`` also writes the JSON lines
there. ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU it is the growth of the
process's peak resident set over the warm-up (Linux with glibc: freed memory is trimmed and the peak reset
through ``/proc/self/clear_refs``; null elsewhere). ``--quick`` runs tiny networks and budgets (a smoke test,
not a measurement).

The code is in ``scripts/benchkit/`` beside this script (the settings, the networks, metarun's implementations,
one module per peer, the measurement); this file is the command line and the table.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from benchkit.impl import Options
from benchkit.learn2learn import L2L_COMMAND
from benchkit.measure import BUDGET_S, REPS, measure
from benchkit.settings import SETTINGS, configured

from metarun.utils.allocator import use_huge_pages


def table(lines: list) -> str:
    """The summary: tasks/s, ratio to the fastest peer and peak memory per setting and implementation."""
    rows = ["| setting | network | impl | tasks/s | vs best peer | peak MB |", "|---|---|---|---:|---:|---:|"]
    for line in lines:
        if "tasks_per_s" in line:
            impl = line["impl"] + (f" ({line['chose']})" if "chose" in line else "")
            impl = f"**{impl}**" if line["impl"] == line["best_peer"] else impl
            peak = "-" if line["peak_mem_mb"] is None else line["peak_mem_mb"]
            speed = f"{line['tasks_per_s']:.0f}" if line["tasks_per_s"] >= 100 else f"{line['tasks_per_s']:.3g}"
            rows.append(f"| {line['setting']} | {line['network']} | {impl} | {speed} | "
                        f"{line['vs_best_peer']:.2f}x | {peak} |")
    return "\n".join(rows)


def threads_arg(value: str):
    """``--threads``: a positive count, or ``all`` (torch's default intra-op threads on all cores)."""
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"{value} is neither a positive thread count nor 'all'")


def parse(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets: checks the script runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=threads_arg, default="all",
                        help="torch intra-op threads (as hardware.num_threads), or all (torch's default)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of the settings")
    parser.add_argument("--learn2learn", default=os.environ.get("METARUN_L2L"), metavar="DIR",
                        help=f"learn2learn's extracted sdist (default $METARUN_L2L); get it with: {L2L_COMMAND}")
    parser.add_argument("--max-seconds-per-setting", type=float,
                        help=f"seconds of timed rounds per setting, after which they stop once there are 2 "
                             f"(default {BUDGET_S})")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Measure every chosen setting, printing its JSON lines as it finishes, then the table."""
    use_huge_pages()  # as the metarun command does, before any tensor: the peers, in this process, get it too
    args = parse(argv)
    device = torch.device(args.device)
    if args.threads != "all":
        # N threads means N cores for every implementation, metarun's task workers included
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(args.threads)])
        torch.set_num_threads(int(args.threads))
    options = Options(device, torch.get_num_threads(), "auto" if args.threads == "all" else int(args.threads),
                      args.learn2learn)
    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        raise ValueError(f"--settings {','.join(unknown)} is not one of {', '.join(SETTINGS)}")
    budget = args.max_seconds_per_setting or BUDGET_S[device.type]
    reps = REPS["quick" if args.quick else device.type]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("")
    lines = []
    for name in names:
        measured = measure(name, configured(name, device, args.quick), options, reps, budget)
        text = "".join(json.dumps(line) + "\n" for line in measured)
        print(text, end="", flush=True)
        if args.out:
            with args.out.open("a") as out:
                out.write(text)
        lines += measured
    print(table(lines))


if __name__ == "__main__":
    main()
