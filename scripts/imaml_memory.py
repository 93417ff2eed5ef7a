"""Peak memory of one meta-gradient: iMAML against second-order MAML as the number of inner steps grows.

    python scripts/imaml_memory.py [--device cpu|cuda] [--steps 5,10,20] [--meta-batch 4] [--mode loop|vmap]
                                   [--quick] [--out FILE]

The Omniglot setting of both papers: 5-way 1-shot, 15 queries per class, 28x28 grey images, MAML's Conv-4 of 64
channels with stride-2 convolutions, synthetic random images of those shapes. For each algorithm and number of
inner steps, a fresh process computes one meta-gradient of a meta-batch with metarun's own code
(``metarun.mapping.task_parallel.meta_backward`` over the algorithm's ``meta_loss``; ``--mode loop``: one task's graph at
a time, as training on a CPU runs it; ``vmap``: the whole meta-batch at once) after one untimed warm-up
meta-gradient, and reports:
  * ``peak_mem_mb``: on CUDA, ``torch.cuda.max_memory_allocated`` during the measured meta-gradient minus the
    memory allocated before it (parameters, data, gradients); on a CPU, the growth of the process's peak resident
    set (VmHWM) over the resident set before it, after freed memory was handed back to the system (glibc's
    ``malloc_trim``) and the peak reset (``/proc/self/clear_refs``), as ``scripts/bench.py`` measures it: what
    the autograd graph, the temporaries and the allocator's slack took at most, in MB (null where Linux's /proc
    is missing).
  * ``seconds``: the measured meta-gradient's wall time (on a CPU with one intra-op thread).
MAML: ``inner_steps`` SGD steps at 0.1 differentiated through (second order). iMAML: as many steps on the
proximal problem at 0.1 with lam = 2 and 5 CG iterations (the paper's Omniglot setting). Prints one JSON line per
(algorithm, steps) and a Markdown table. ``--quick`` runs a tiny network (a smoke test, not a measurement).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from metarun.algos import imaml, maml
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import IMAMLConfig, MAMLConfig
from metarun.mapping.task_parallel import meta_backward
from metarun.models.conv4 import Conv4
from metarun.models.network import functional_forward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.measure import peak_mb, reset_peak, synchronize  # noqa: E402  (scripts/benchkit)
from benchkit.settings import OMNIGLOT, synthetic_batch  # noqa: E402

from metarun.utils.allocator import use_huge_pages

ALGORITHMS = {
    "maml": lambda steps: (maml.ALGORITHM, MAMLConfig(inner_lr=0.1, inner_steps=steps)),
    "imaml": lambda steps: (imaml.ALGORITHM, IMAMLConfig(inner_lr=0.1, inner_steps=steps, lam=2.0, cg_steps=5)),
}
SETTING = dict(ways=5, shots=1, queries=15, shape=OMNIGLOT, width=64)
QUICK = dict(queries=2, width=4)


def measure(algo: str, steps: int, device: torch.device, meta_batch: int, mapping: str, quick: bool) -> dict:
    """One meta-gradient's peak memory and time, after a warm-up one (in this process: run it in a fresh one)."""
    setting = {**SETTING, **(QUICK if quick else {}), "meta_batch": meta_batch}
    if device.type == "cpu":
        torch.set_num_threads(1)  # the same thread count for every run (torch's per-thread buffers count too)
    torch.manual_seed(0)
    model = Conv4(setting["shape"], setting["ways"], setting["width"], max_pool=False).to(device)
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    forward, batch = functional_forward(model), synthetic_batch(setting, device)
    algorithm, cfg = ALGORITHMS[algo](steps)

    def task(p, *tensors):
        return algorithm.meta_loss(forward, p, *tensors, cfg, OBJECTIVES["classification"])

    def meta_gradient():
        for p in params.values():
            p.grad = None
        meta_backward(task, params, batch, mapping, lambda loss: loss / batch.num_tasks)
        synchronize(device)

    meta_gradient()  # warm-up: kernels, libraries and the gradients' memory exist before the measurement
    baseline = reset_peak(device)
    start = time.perf_counter()
    meta_gradient()
    seconds = time.perf_counter() - start
    return dict(algo=algo, inner_steps=steps, peak_mem_mb=peak_mb(device, baseline), seconds=round(seconds, 3),
                device=str(device), mode=mapping, meta_batch=meta_batch, network=f"conv4-{setting['width']}-stride2",
                ways=setting["ways"], shots=setting["shots"], queries=setting["queries"])


def in_fresh_process(algo: str, steps: int, args: argparse.Namespace) -> dict:
    """``measure`` in a new Python process, so no earlier run's memory or peak counts."""
    command = [sys.executable, __file__, "--one", algo, str(steps), "--device", args.device, "--meta-batch",
               str(args.meta_batch), "--mode", args.mapping, *(["--quick"] if args.quick else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{algo} with {steps} inner steps failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def table(lines: list) -> str:
    """Peak MB of each algorithm per number of inner steps, and iMAML's share of MAML's."""
    rows = ["| inner steps | maml peak MB | imaml peak MB | imaml / maml | maml s | imaml s |",
            "|---:|---:|---:|---:|---:|---:|"]
    by = {(line["algo"], line["inner_steps"]): line for line in lines}
    for steps in sorted({line["inner_steps"] for line in lines}):
        first, second = by[("maml", steps)], by[("imaml", steps)]
        a, b = first["peak_mem_mb"], second["peak_mem_mb"]
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        rows.append(f"| {steps} | {'-' if a is None else a} | {'-' if b is None else b} | {ratio} | "
                    f"{first['seconds']} | {second['seconds']} |")
    return "\n".join(rows)


def parse(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", default="5,10,20", help="comma-separated numbers of inner steps")
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per meta-gradient")
    # --mode and the lines' "mode" keep the names earlier versions had: scripts and saved lines use them
    parser.add_argument("--mode", dest="mapping", choices=("loop", "vmap"), default="loop", help="how tasks are mapped")
    parser.add_argument("--quick", action="store_true", help="a tiny network: checks the script runs")
    parser.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    parser.add_argument("--one", nargs=2, metavar=("ALGO", "STEPS"), help=argparse.SUPPRESS)  # a child process
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Measure each (algorithm, steps) in its own process, printing its JSON line as it finishes, then the table."""
    use_huge_pages()  # as the metarun command does, before any tensor (the measuring processes inherit it)
    args = parse(argv)
    if args.one:
        algo, steps = args.one
        line = measure(algo, int(steps), torch.device(args.device), args.meta_batch, args.mapping, args.quick)
        print(json.dumps(line))
        return
    lines = []
    for steps in (int(s) for s in args.steps.split(",")):
        for algo in ALGORITHMS:
            lines.append(in_fresh_process(algo, steps, args))
            print(json.dumps(lines[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(table(lines))


if __name__ == "__main__":
    main()
