"""Meta-training throughput (tasks/s), FLOP rate, MFU and peak memory: metarun's training step against its peers.

Every algorithm in conf/algo/ has a setting; metarun's step is measured against the packages users pick instead,
or a plain PyTorch loop where no package has the algorithm.

    python scripts/bench.py [--quick] [--device cpu|cuda] [--threads 1|N|all] [--settings NAME,...|none]
                            [--extras eval,gpu-busy|none] [--learn2learn DIR] [--max-seconds-per-setting S]
                            [--out FILE]

Each measurement is one full meta-step repeated (forward, backward, Adam step) on a fixed meta-batch of
synthetic random images of the setting's shape, made on the device (the sampler's cost is not counted; see
``scripts/bench_data.py`` for that). Settings, one or more per algorithm, each its paper's protocol (Conv-4 is
[3x3 conv, batch norm, ReLU, 2x2 max-pool] x 4; MAML's Omniglot Conv-4 halves with stride-2 convolutions instead):
  * maml-omniglot-5w1s: MAML (Finn et al., 2017) second order, 5-way 1-shot, 15 queries, 28x28, stride-2 Conv-4 of
    64 channels, meta-batch 32, 1 inner step at 0.4.
  * maml-omniglot-20w1s: as above, 20-way, meta-batch 16, 5 inner steps at 0.1.
  * maml-miniimagenet-5w1s: 5-way 1-shot, 15 queries, 84x84 RGB, Conv-4 of width 32, meta-batch 4, 5 inner steps
    at 0.01.
  * fomaml-miniimagenet-5w1s: first-order MAML (Finn et al., 2017, section 5.2), as maml-miniimagenet-5w1s.
  * mamlpp-miniimagenet-5w1s: MAML++ (Antoniou et al., 2019; conf/algo/mamlpp.yaml: multi-step loss, per-layer
    per-step learned rates from 0.1, per-step batch-norm weights), Conv-4 of width 48, meta-batch 2, 5 inner steps,
    at outer iteration 25,001: the second half of its training, second order, the multi-step loss annealed.
  * anil-miniimagenet-5w5s: ANIL (Raghu et al., 2019), inner loop on the head only, 5-way 5-shot, 15 queries,
    Conv-4 of width 32, meta-batch 2, 5 inner steps at 0.01.
  * metasgd-omniglot-5w1s: Meta-SGD (Li et al., 2017), a learned rate per weight entry from 0.1, one inner step,
    as maml-omniglot-5w1s.
  * reptile-omniglot-5w10s: Reptile (Nichol et al., 2018), 5-way 10-shot training episodes, stride-2 Conv-4 of 64
    channels, 5 inner Adam steps (lr 0.001, beta1 0) on batches of 10, meta-batch 5.
  * imaml-omniglot-5w1s: iMAML-GD (Rajeswaran et al., 2019, table 2), 5-way 1-shot, 15 queries, stride-2 Conv-4 of
    64 channels, 16 gradient steps at 0.1 on the proximal problem with lam = 2, 5 CG iterations for the implicit
    meta-gradient, meta-batch 16 (torchopt's example's).
  * metalstm-miniimagenet-5w1s: Meta-LSTM (Ravi & Larochelle, 2017), 5-way 1-shot, 15 queries, Conv-4 of width 32,
    12 learner updates by an LSTM of 20 units, one episode per meta-step.
  * protonet-omniglot-60w1s: ProtoNet (Snell et al., 2017), 60-way 1-shot, 5 queries, Conv-4 of 64 channels
    without a head, one episode per meta-step.
  * protonet-miniimagenet-5w5s: ProtoNet, 5-way 5-shot, 15 queries, ResNet-12, meta-batch 2.
  * matchingnet-omniglot-5w1s: Matching Networks (Vinyals et al., 2016) without full context embeddings, 5-way
    1-shot, 15 queries, Conv-4 of 64 channels without a head, one episode per meta-step.
  * relationnet-omniglot-5w1s: Relation Networks (Sung et al., 2018), 5-way 1-shot, 19 queries, MSE on the
    relation scores, Conv-4 of 64 channels without a head, a relation MLP of 8 units, one episode per meta-step.
  * r2d2-miniimagenet-16w1s: R2-D2 (Bertinetto et al., 2019), 16-way 1-shot, 14 queries, Conv-4 of 64 channels
    without a head, ridge regression from lambda 50 and logit scale 1e-4 (both learned), one episode per meta-step.
  * metaoptnet_svm-miniimagenet-5w15s: MetaOptNet-SVM (Lee et al., 2019), 5-way 15-shot training episodes, 6
    queries, ResNet-12, 50 dual iterations, meta-batch 8.
  * baseline-miniimagenet-8w1s and baselinepp-miniimagenet-8w1s: Baseline and Baseline++ (Chen et al., 2019)
    pre-training, a batch of 16 images (8 classes x 2) over the 64 meta-train classes, Conv-4 of 64 channels.
On the CPU ResNet-12's widths are quartered (16-40-80-160; the full network takes about a minute per task on one
core); the ``network`` field of each line says which ran. Every network uses batch statistics in training (batch
norm in train mode) and starts from the same seeded weights in every implementation, and the algorithms' own
learned tensors (learned rates, the relation module, scales) from the plain loop's where there is one.

Implementations, in the same process:
  * metarun-<mapping> for each mapping ``hardware.task_parallel=auto`` chooses between on the device (vmap, loop,
    and on a CPU with several cores threads): ``metarun.runner.train.meta_step`` (``task_parallel.meta_backward``
    over the algorithm's real ``meta_loss``, then the fused Adam step) with metarun's own networks, the algorithm
    and its settings composed from conf/algo/<algo>.yaml with the setting's values as a run composes them (every
    other key at the option's default), on the intra-op threads ``hardware.num_threads`` gives (``--threads N``: N;
    ``all``: auto, sized from the model; the threads mapping runs one per task worker).
  * metarun-auto: the mapping ``task_parallel.tune`` picks, in wall time as training picks it (its timing is not
    counted; the line says what it chose, what the timing cost, or why nothing was timed). metarun-loop-checkpoint
    (MAML's settings): ``algo.checkpoint_inner=true``.
  * The variants some settings add (``benchkit/settings.py``, ``VARIANTS``): metarun-vmap-chunk on
    maml-omniglot-20w1s, where vmap is among the device's mappings (vmap with ``hardware.vmap_chunk`` a quarter of
    the meta-batch, at least 1, in its line's ``vmap_chunk``: one chunk's graph alive at a time; its ``peak_mem_mb``
    against metarun-vmap's and metarun-loop's, its speed against vmap's), and metarun-auto-joint on the settings of
    the algorithms that embed episodes in training, ProtoNet, Matching and Relation Networks, R2-D2 and
    MetaOptNet-SVM (``algo.embedding_pass=joint``: support and query through the backbone in one pass, the mapping
    as auto resolves it; the plain loops keep the composed pass, separate, so the line shows what one pass gains).
  * metarun-auto-bf16 (``hardware.precision=bf16``): on CUDA, and on a CPU with AMX bf16 (oneDNN's bf16 kernels)
    for the algorithms ``hardware.precision=auto`` was measured for (ProtoNet, Matching and Relation Networks, R2-D2,
    MetaOptNet-SVM, MAML).
  * metarun-auto-channels-last or metarun-auto-contiguous: auto in the layout ``hardware.channels_last=auto`` did
    not choose for the setting on the device (it leaves a GPU's weights contiguous until this line has timed
    channels-last there).
  * CUDA only: metarun-cuda-graphs
    (``hardware.cuda_graphs=true``: the meta-step captured as a CUDA graph after two warm-up steps and replayed, in
    the mapping auto chose) and metarun-compile (``hardware.compile=true``, in the mapping auto chose; a note line
    with the error when torch.compile fails).
  * The peers, each with its own usual model code: an ``nn.Sequential`` Conv-4 of ``nn.Conv2d`` and
    ``nn.BatchNorm2d`` (default running statistics, train mode; iMAML's peers without running statistics, as
    their code has it), or a standard ResNet-12 module.
    MAML: plain (a hand-written loop over tasks: inner steps with ``torch.autograd.grad(create_graph=True)``
    and ``torch.func.functional_call`` with the fast weights, ``backward()`` per task), learn2learn
    (``MAML(model).clone()`` and ``adapt`` per task, as its examples), higher (``innerloop_ctx``) and torchopt
    (``MetaSGD`` with ``extract_state_dict``/``recover_state_dict`` per task and one backward of the mean
    query loss, as its MAML example). FOMAML, ANIL and Meta-SGD: that plain loop without a graph through the
    inner gradients, on the head only, with a learned rate per entry. MAML++: the plain loop with its learned
    rates, per-step batch-norm weights and weighted per-step query losses. Reptile: per task, ``torch.optim.Adam``
    on a copy of the weights through ``functional_call``, on metarun's support batches, then theta - W into the
    gradients. iMAML: plain (its authors' code, aravindr93/imaml_dev: inner SGD steps with
    ``torch.autograd.grad`` on fast weights through ``functional_call``, Hessian-vector products by double
    backward on flat vectors, CG by hand) and torchopt (an ``ImplicitMetaGradientModule`` per task as its
    examples/iMAML/imaml_omniglot.py, one backward of the mean query loss). Both solve (I + H/lam) g = query
    gradient with exactly ``cg_steps`` CG iterations from zero as metarun does: no early stop, and torchopt's
    ``solve_cg`` where its example uses ``solve_normal_cg`` (CG on the normal equations, twice the
    Hessian-vector products per iteration for the same symmetric system). ProtoNet: plain, the paper's code
    (jakesnell/prototypical-networks). Matching Networks, R2-D2 and Relation Networks: plain loops over episodes
    with the attention, the ridge regression's solve, or a relation ``nn.Sequential`` on every (class, query) pair
    written out. These four embed an episode as the algorithm's composed ``algo.embedding_pass`` has metarun do it,
    so that both do the same work: one forward of support and query together (joint, as the reference codes of
    ProtoNet, R2-D2 and Matching Networks do) or one each (separate, as Relation Networks' does).
    Baseline and Baseline++: an ordinary classification step on the episode's 16 images (Baseline++: cosine logits
    against the head's weights). Meta-LSTM and MetaOptNet-SVM have no plain loop (the LSTM meta-learner over every
    weight coordinate, the SVM's QP solver): metarun lines only, with a note line.
  ``pip install -e ".[bench]"`` installs higher and torchopt. learn2learn 0.2.0 does not build on Python
  3.11; its MAML is pure Python and loads from the extracted sdist (``--learn2learn DIR``, default
  ``$METARUN_L2L``; else an installed learn2learn). A missing peer is a note line.

Timing: warm-up steps (peak memory is taken over them), then rounds that run every implementation once in turn,
the fastest round counting (CUDA synchronised around each step); rounds stop early once they have taken
``--max-seconds-per-setting`` and every implementation has 2 (default 10 s on CUDA). With one CPU thread
(``--threads 1``) a step is timed in the process's CPU time (``clock: process``; all its threads', so the threads
mapping's workers count in full), which leaves out the time other work on a shared machine holds the core, and
glibc's heap keeps freed memory as a run's does where it has one core (``hardware.keep_freed_memory=auto``: one
thread, or one core left to the job; the peers share it).
Otherwise (``--threads all``, the default: the peers on torch's default intra-op threads, metarun as
``hardware.num_threads=auto`` sizes them) in wall time (``clock: wall``). ``--threads N`` also confines the
process to N cores, so metarun's threads mapping gets no more cores than the peers' threads. ``threads`` in a line
is the intra-op thread count it ran with, ``cores`` the cores it ran on (the threads mapping: one per worker).

FLOPs and MFU (``benchkit/flops.py``): ``flops_per_step`` is the setting's model FLOPs, the same on every line: one
step of metarun's per-task loop (else the plain loop) under torch's ``FlopCounterMode`` (matrix products and
convolutions of the forward, backward and inner loop), which runs each product of the step once (vmap's batched
convolutions over the tasks' own weights count about ten times as many on MAML 5-way 1-shot, for the same step).
``tflops`` is the model FLOPs over the timed seconds per step and ``mfu`` that over ``peak_tflops``, the dense peak
of the precision that ran (``precision``: bf16 under autocast, else fp32 on the CPU and tf32 on CUDA, as cuDNN runs
fp32 convolutions by default). ``peak_source`` says where the peak comes from: NVIDIA's datasheet for an H100, H200
or A100 (``table: H100 SXM bf16``), else a timed matrix product in that precision (``measured: 4096x4096 fp32
matmul, 2 cores``; on the CPU with the line's cores, in its clock), which every line also reports as
``matmul_tflops``.

Extras (``--extras``, both by default), after the settings:
  * eval: meta-testing as metarun evaluates (``benchkit/evaluation.py``): 600 fixed test episodes (100 on a CPU) of
    MAML 5-way 1-shot with 15 queries and 10 test-time inner steps on the maml-omniglot-5w1s network, scored by
    ``metarun.runner.evaluate.score`` in chunks of at most ``eval.batch_size`` (100), mapped as ``mode=eval`` maps
    them (``task_parallel.tune`` on evaluation: vmap on CUDA; the loop, or threads where they win, on a CPU), timed
    after an untimed chunk (synthetic episodes; drawing them is not timed). A JSON line of kind ``eval`` (seconds,
    episodes_per_s, the mapping) and a line ``eval: ...``.
  * gpu-busy (CUDA only; elsewhere the line ``gpu-busy: CUDA only`` and no JSON): the share of the wall time the GPU
    is busy over 200 training iterations of metarun-auto on maml-omniglot-5w1s after 3 warm-up ones, eager and with
    ``hardware.cuda_graphs=true``
    (``benchkit/gpu_busy.py``): the union of the intervals of the device activities (kernels, copies, memsets) that
    ``torch.profiler`` records, profiling the device only, over the wall time of the iterations between two
    synchronisations. A JSON line of kind ``gpu-busy`` (busy_fraction, busy_s, wall_s) and a line ``gpu-busy: ...``
    for each.
``--quick`` runs a few episodes and iterations of each.

Prints one JSON line per measurement (``impl, algo, setting, device, network, tasks_per_s, peak_mem_mb,
threads, cores, clock, best_peer, vs_best_peer, flops_per_step, tflops, mfu, peak_tflops, peak_source, ...``;
``vs_best_peer`` is the speed relative to the fastest peer, null without one), one note line per missing peer and
setting, and a markdown table; ``--out FILE`` also writes the JSON lines there. ``peak_mem_mb`` is
``torch.cuda.max_memory_allocated`` on CUDA; on the CPU it is the growth of the process's peak resident set over
the warm-up (Linux with glibc: freed memory is trimmed and the peak reset through ``/proc/self/clear_refs``; null
elsewhere). ``--quick`` runs tiny networks, budgets and matrix products, and metarun-auto picks its mapping without
timing them (a smoke test, not a measurement). The whole benchmark on a GPU is ``python scripts/bench.py --device
cuda``; ``scripts/gpu_check.sh`` runs six of the settings and the extras.

The code is in ``scripts/benchkit/`` beside this script (the settings and the algorithms they compose, the
networks, metarun's implementations, the plain loops and one module per peer package, the FLOP counts and peaks,
the measurement, the evaluation's timing and the GPU-busy fraction); this file is the command line and the table.
"""

import argparse
import json
import os
from pathlib import Path

import torch
from benchkit.evaluation import time_evaluation
from benchkit.flops import MATMUL_SIZE
from benchkit.gpu_busy import measure_gpu_busy
from benchkit.impl import Options
from benchkit.learn2learn import L2L_COMMAND
from benchkit.measure import BUDGET_S, REPS, measure
from benchkit.settings import QUICK, SETTINGS, configured

from metarun.config.run import HardwareConfig
from metarun.utils.allocator import keep_freed_memory, use_huge_pages
from metarun.utils.hardware import keeps_freed_memory

# the measurements besides the settings' lines (``--extras``)
EXTRAS = ("eval", "gpu-busy")


def table(lines: list) -> str:
    """The summary: tasks/s, ratio to the fastest peer, FLOP rate, MFU and peak memory per setting and
    implementation."""
    rows = ["| setting | network | impl | tasks/s | vs best peer | TFLOP/s | MFU | peak MB |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for line in lines:
        if "tasks_per_s" in line:
            impl = line["impl"] + (f" ({line['chose']})" if "chose" in line else "")
            impl = f"**{impl}**" if line["impl"] == line["best_peer"] else impl
            peak = "-" if line["peak_mem_mb"] is None else line["peak_mem_mb"]
            speed = f"{line['tasks_per_s']:.0f}" if line["tasks_per_s"] >= 100 else f"{line['tasks_per_s']:.3g}"
            ratio = "-" if line["vs_best_peer"] is None else f"{line['vs_best_peer']:.2f}x"
            rows.append(f"| {line['setting']} | {line['network']} | {impl} | {speed} | {ratio} | "
                        f"{line['tflops']:.3g} | {100 * line['mfu']:.2g}% | {peak} |")
    return "\n".join(rows)


def eval_text(line: dict) -> str:
    """The evaluation's line in the printed output."""
    return (f"eval: {line['episodes']} test episodes of {line['setting']} ({line['test_inner_steps']} test inner "
            f"steps, {line['network']}, {line['mapping']}, chunks of at most {line['batch_size']}) in "
            f"{line['seconds']:.3g} s: {line['episodes_per_s']:.4g} episodes/s" +
            (f"; {line['seconds_graphs']:.3g} s with CUDA graphs: {line['episodes_per_s_graphs']:.4g} episodes/s"
             if "seconds_graphs" in line else ""))


def gpu_busy_text(line: dict) -> str:
    """A GPU-busy fraction's line in the printed output."""
    if "note" in line:
        return f"gpu-busy: not measured: {line['note']}"
    return (f"gpu-busy: {100 * line['busy_fraction']:.1f}% of {line['wall_s']:.3g} s over {line['iterations']} "
            f"training iterations of {line['setting']} ({line['impl']}, {line['chose']})")


def threads_arg(value: str):
    """``--threads``: a positive count, or ``all`` (torch's default intra-op threads on all cores)."""
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"{value} is neither a positive thread count nor 'all'")


def extras_arg(value: str) -> tuple:
    """``--extras``: a comma-separated subset of ``EXTRAS``, or ``none``."""
    chosen = () if value == "none" else tuple(value.split(","))
    unknown = [name for name in chosen if name not in EXTRAS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{','.join(unknown)} is not one of {', '.join(EXTRAS)} (or none)")
    return chosen


def parse(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets: checks the script runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=threads_arg, default="all",
                        help="torch intra-op threads (as hardware.num_threads), or all (torch's default)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated subset of the settings, or none (the extras only)")
    parser.add_argument("--learn2learn", default=os.environ.get("METARUN_L2L"), metavar="DIR",
                        help=f"learn2learn's extracted sdist (default $METARUN_L2L); get it with: {L2L_COMMAND}")
    parser.add_argument("--max-seconds-per-setting", type=float,
                        help=f"seconds of timed rounds per setting, after which they stop once there are 2 "
                             f"(default {BUDGET_S})")
    parser.add_argument("--extras", type=extras_arg, default=EXTRAS,
                        help=f"the measurements besides the settings: a comma-separated subset of {','.join(EXTRAS)}, "
                             f"or none (default: all)")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    return parser.parse_args(argv)


def emit(lines: list, out) -> None:
    """Print JSON lines as they are measured, and append them to ``out`` (a path, or None)."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    print(text, end="", flush=True)
    if out:
        with out.open("a") as file:
            file.write(text)


def main(argv=None) -> None:
    """Measure every chosen setting, printing its JSON lines as it finishes, then the table, then each extra: its JSON
    line and a line of text."""
    use_huge_pages()  # as the metarun command does, before any tensor: the peers, in this process, get it too
    args = parse(argv)
    device = torch.device(args.device)
    if args.threads != "all":
        # N threads means N cores for every implementation, metarun's task workers included
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(args.threads)])
        torch.set_num_threads(int(args.threads))
    options = Options(device, torch.get_num_threads(), "auto" if args.threads == "all" else int(args.threads),
                      args.learn2learn, MATMUL_SIZE["quick" if args.quick else device.type],
                      **({"job_tasks": QUICK["meta_batch"]} if args.quick else {}))
    if keeps_freed_memory(HardwareConfig(device=args.device, num_threads=options.num_threads), device):
        keep_freed_memory()  # as a run on these cores does (hardware.keep_freed_memory=auto): the peers get it too
    names = [] if args.settings == "none" else args.settings.split(",")
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
        emit(measured, args.out)
        lines += measured
    if lines:
        print(table(lines), flush=True)  # before the extras: a failing one leaves it printed
    if "eval" in args.extras:
        evaluated = time_evaluation(options, args.quick)
        emit([evaluated], args.out)
        print(eval_text(evaluated))
    if "gpu-busy" in args.extras:
        busy = measure_gpu_busy(options, args.quick)
        emit(busy, args.out)
        print("\n".join(map(gpu_busy_text, busy)) or "gpu-busy: CUDA only")


if __name__ == "__main__":
    main()
