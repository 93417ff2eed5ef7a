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
  * metarun-<mode> for each mode ``hardware.task_parallel=auto`` chooses between on the device (vmap, loop,
    and on a CPU with several cores threads): ``metarun.train.meta_step`` (``task_parallel.meta_backward`` over
    the algorithm's real ``meta_loss``, then the fused Adam step) with metarun's own networks, as training runs
    it, on the intra-op threads ``hardware.num_threads``
    gives (``--threads N``: N; ``all``: auto, sized from the model; the threads mode runs one per task worker).
  * metarun-auto: the mode ``task_parallel.tune`` picks, in wall time as training picks it (its timing is not
    counted; the line says what it chose, what the timing cost, or why nothing was timed). metarun-loop-checkpoint (MAML): ``algo.checkpoint_inner=true``.
  * CUDA only: metarun-auto-bf16 (``hardware.precision=bf16``) and metarun-compile (``hardware.compile=true``,
    in the mode auto chose; a note line with the error when torch.compile fails).
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
process's CPU time (``clock: process``; all its threads', so the threads mode's workers count in full), which
leaves out the time other work on a shared machine holds the core. Otherwise (``--threads all``, the default:
the peers on torch's default intra-op threads, metarun as ``hardware.num_threads=auto`` sizes them) in wall
time (``clock: wall``). ``--threads N`` also confines the process to N cores, so metarun's threads mode gets
no more cores than the peers' threads. ``threads`` in a line is the intra-op thread count it ran with.

Prints one JSON line per measurement (``impl, algo, setting, device, network, tasks_per_s, peak_mem_mb,
threads, clock, best_peer, vs_best_peer, ...``; ``vs_best_peer`` is the speed relative to the fastest peer),
one note line per missing peer and setting, and a markdown table; ``--out FILE`` also writes the JSON lines
there. ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU it is the growth of the
process's peak resident set over the warm-up (Linux with glibc: freed memory is trimmed and the peak reset
through ``/proc/self/clear_refs``; null elsewhere). ``--quick`` runs tiny networks and budgets (a smoke test,
not a measurement).
"""

import argparse
import ctypes
import functools
import gc
import importlib
import json
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call

from metarun import hardware
from metarun.algos import imaml, maml, protonet
from metarun.components import Components
from metarun.config import HardwareConfig, IMAMLConfig, MAMLConfig, OptimConfig
from metarun.data.tasks import TaskBatch
from metarun.distributed import Group
from metarun.network import functional_forward
from metarun.task_parallel import meta_backward, tune
from metarun.train import TrainState, build_optimizer, meta_step
from metarun.models import without_head
from metarun.models.conv4 import Conv4
from metarun.models.resnet12 import ResNet12
from metarun.objectives import OBJECTIVES

CLASSIFY = OBJECTIVES["classification"]
OMNIGLOT, MINIIMAGENET = (1, 28, 28), (3, 84, 84)
SETTINGS = {
    "maml-omniglot-5w1s": dict(algo="maml", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=32,
                               inner_steps=1, inner_lr=0.4, width=64, max_pool=False),
    "maml-omniglot-20w1s": dict(algo="maml", ways=20, shots=1, queries=15, shape=OMNIGLOT, meta_batch=16,
                                inner_steps=5, inner_lr=0.1, width=64, max_pool=False),
    "maml-miniimagenet-5w1s": dict(algo="maml", ways=5, shots=1, queries=15, shape=MINIIMAGENET, meta_batch=4,
                                   inner_steps=5, inner_lr=0.01, width=32, max_pool=True),
    "imaml-omniglot-5w1s": dict(algo="imaml", ways=5, shots=1, queries=15, shape=OMNIGLOT, meta_batch=16,
                                inner_steps=16, inner_lr=0.1, lam=2.0, cg_steps=5, width=64, max_pool=False),
    "protonet-omniglot-60w1s": dict(algo="protonet", ways=60, shots=1, queries=5, shape=OMNIGLOT, meta_batch=1,
                                    width=64, max_pool=True),
    "protonet-miniimagenet-5w5s": dict(algo="protonet", ways=5, shots=5, queries=15, shape=MINIIMAGENET,
                                       meta_batch=2, widths=(64, 160, 320, 640)),
}
CPU_RESNET12_WIDTHS = (16, 40, 80, 160)
QUICK = dict(meta_batch=2, queries=2, width=4, widths=(4, 4, 4, 4))
QUICK_SIDE = 28  # --quick's images are at most this wide: miniImageNet's 84 px made most of a smoke test's time
# (warm-up steps, timed rounds) per implementation; on CUDA the benchmark-off cuDNN needs no more warm-up
REPS = {"cpu": (1, 6), "cuda": (1, 10), "quick": (1, 1)}
# seconds of timed rounds per setting, after which they stop once there are 2 (CUDA: keeps a full run near 3 min)
BUDGET_S = {"cpu": 1800, "cuda": 10}
PEERS = ("plain", "learn2learn", "higher", "torchopt")
L2L_COMMAND = "pip download --no-deps --no-binary :all: learn2learn==0.2.0 && tar xzf learn2learn-0.2.0.tar.gz"


class MissingPeer(Exception):
    """A peer package that is not installed or not found; the message says how to get it."""


@dataclass
class Options:
    """How this run measures."""

    device: torch.device
    threads: int  # torch's intra-op threads for the peers
    num_threads: object  # metarun's hardware.num_threads: a count, or auto (sized from the model)
    learn2learn: object  # learn2learn's extracted sdist, or None

    @property
    def clock(self):
        """The process's CPU time for one CPU thread (it leaves out the time other work on a shared machine holds
        the core), else wall time."""
        return time.process_time if self.device.type == "cpu" and self.num_threads == 1 else time.perf_counter


@dataclass
class Impl:
    """One implementation of a setting: ``backward()`` accumulates the meta-gradient (the mean over the
    meta-batch) into ``params``; ``prepare()`` sets the intra-op threads it runs with (outside the timing);
    ``step``, where given, is its whole training step (metarun's: ``metarun.train.meta_step``)."""

    backward: Callable
    params: list
    prepare: Callable
    extra: dict = field(default_factory=dict)
    step: Optional[Callable] = None


def synthetic_batch(setting: dict, device) -> TaskBatch:
    """A meta-batch of random images and balanced labels (class-major), as the sampler hands it over."""
    generator = torch.Generator(device=device).manual_seed(0)

    def split(per_class: int):
        x = torch.randn(setting["meta_batch"], setting["ways"] * per_class, *setting["shape"], device=device,
                        generator=generator)
        y = torch.arange(setting["ways"], device=device).repeat_interleave(per_class).expand(setting["meta_batch"], -1)
        return x, y.contiguous()

    return TaskBatch(*split(setting["shots"]), *split(setting["queries"]))


def configured(name: str, device, quick: bool) -> dict:
    """Setting ``name`` as measured on ``device``: ResNet-12's widths quartered on a CPU, tiny with ``quick``
    (narrow networks, small batches and images)."""
    setting = dict(SETTINGS[name])
    if device.type == "cpu" and "widths" in setting:
        setting["widths"] = CPU_RESNET12_WIDTHS
    if quick:
        setting.update({key: value for key, value in QUICK.items() if key in setting})
        channels, *sides = setting["shape"]
        setting["shape"] = (channels, *(min(side, QUICK_SIDE) for side in sides))
    return setting


def network(setting: dict) -> str:
    """The setting's network in words, e.g. ``conv4-64-stride2`` or ``resnet12-16-40-80-160``."""
    if "widths" in setting:
        return "resnet12-" + "-".join(map(str, setting["widths"]))
    return f"conv4-{setting['width']}-{'maxpool' if setting['max_pool'] else 'stride2'}"


def peer_conv4(shape: tuple, out_features, width: int, max_pool: bool, running: bool = True) -> nn.Sequential:
    """The Conv-4 of the peers' examples: [Conv2d, BatchNorm2d, ReLU, 2x2 max-pool or MAML's stride-2 conv] x 4,
    then a linear head to ``out_features`` (none when None); ``running=False``: batch norm without running
    statistics (``track_running_stats=False``, as the iMAML peers' code has it: torch.func transforms refuse the
    in-place update of the running averages)."""
    layers, channels, size = [], shape[0], list(shape[1:])
    for _ in range(4):
        layers += [nn.Conv2d(channels, width, 3, stride=1 if max_pool else 2, padding=1),
                   nn.BatchNorm2d(width, track_running_stats=running), nn.ReLU(),
                   *([nn.MaxPool2d(2)] if max_pool else [])]
        channels, size = width, [s // 2 if max_pool else (s + 1) // 2 for s in size]
    head = [nn.Linear(width * size[0] * size[1], out_features)] if out_features else []
    return nn.Sequential(*layers, nn.Flatten(), *head)


class PeerBlock(nn.Module):
    """A ResNet-12 block as MetaOptNet's code writes it: three 3x3 conv-BN with leaky ReLUs, a 1x1 conv-BN
    shortcut, 2x2 max-pool."""

    def __init__(self, channels_in: int, channels_out: int):
        """A block from ``channels_in`` to ``channels_out`` channels."""
        super().__init__()
        width = channels_out
        self.conv1, self.bn1 = nn.Conv2d(channels_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.downsample = nn.Sequential(nn.Conv2d(channels_in, width, 1, bias=False), nn.BatchNorm2d(width))
        self.relu, self.pool = nn.LeakyReLU(0.1), nn.MaxPool2d(2)

    def forward(self, x):
        """The block's output for ``x`` [B, C, H, W]."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.pool(self.relu(self.bn3(self.conv3(out)) + self.downsample(x)))


def peer_model(setting: dict, device) -> nn.Module:
    """The peers' network for the setting, seeded: every implementation starts from the same weights."""
    torch.manual_seed(0)
    if "widths" in setting:
        channels = [setting["shape"][0], *setting["widths"]]
        blocks = [PeerBlock(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])]
        model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    else:
        head = None if setting["algo"] == "protonet" else setting["ways"]
        model = peer_conv4(setting["shape"], head, setting["width"], setting["max_pool"], setting["algo"] != "imaml")
    return model.to(device)


def metarun_model(setting: dict, device) -> nn.Module:
    """metarun's own network for the setting (its batch norm), holding the peers' initial weights."""
    if "widths" in setting:
        model = ResNet12(setting["shape"], setting["ways"], setting["widths"])
    else:
        model = Conv4(setting["shape"], setting["ways"], setting["width"], max_pool=setting["max_pool"])
    model = without_head(model) if setting["algo"] == "protonet" else model
    with torch.no_grad():
        # both networks list their parameters in the same order (conv, batch norm, ..., head)
        for mine, theirs in zip(model.parameters(), peer_model(setting, "cpu").parameters(), strict=True):
            if mine.shape != theirs.shape:
                raise ValueError(f"parameter shapes differ between the networks: {mine.shape} and {theirs.shape}")
            mine.copy_(theirs)
    return model.to(device)


def metarun(setting: dict, batch: TaskBatch, options: Options, mode: str, checkpoint_inner: bool = False,
            **overrides) -> tuple:
    """metarun's training step as ``metarun.train`` runs it (``meta_step``: meta-gradient, fused Adam step) and
    its ``Components``: ``hardware.num_threads`` sizes the intra-op threads, and ``mode="auto"`` is resolved by
    ``metarun.task_parallel.tune`` (in wall time, as training does)."""
    device = options.device
    model = metarun_model(setting, device)
    params = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    if setting["algo"] == "maml":
        algorithm = maml.ALGORITHM
        settings = MAMLConfig(inner_steps=setting["inner_steps"], inner_lr=setting["inner_lr"],
                              checkpoint_inner=checkpoint_inner)
    elif setting["algo"] == "imaml":
        algorithm = imaml.ALGORITHM
        settings = IMAMLConfig(inner_steps=setting["inner_steps"], inner_lr=setting["inner_lr"], lam=setting["lam"],
                               cg_steps=setting["cg_steps"])
    else:
        algorithm, settings = protonet.ALGORITHM, None
    forward = functional_forward(model)
    config = OmegaConf.structured(HardwareConfig(device=str(device), task_parallel=mode,
                                                 num_threads=options.num_threads, **overrides))
    parts = Components(None, CLASSIFY, algorithm, settings, model, forward, params, device, mode, config,
                       hardware.intra_op_threads(config, model))
    task_fn = parts.per_task(lambda p, *task: algorithm.meta_loss(forward, p, *task, settings, CLASSIFY))
    extra = {}
    if mode == "auto":
        # as a long training run picks (a million tasks: the 10 s cap bounds the race, not the job's 5%)
        choice = tune(parts, task_fn, params, lambda n: TaskBatch(*(t[:n] for t in batch.tensors())), 10 ** 6)
        extra = {"chose": parts.task_parallel, "tune_s": {k: round(v, 4) for k, v in choice["seconds"].items()},
                 "tune_cost_s": round(choice["cost"], 2), "tune_why": choice["why"]}
    optimizer, scheduler = build_optimizer(OmegaConf.structured(OptimConfig()), params, iterations=1)
    state = TrainState(params, optimizer, scheduler, hardware.grad_scaler(config, device), torch.Generator(device))

    def step():
        meta_step(parts, state, task_fn, batch, batch.num_tasks, None, Group())

    def backward():
        meta_backward(task_fn, params, batch, parts.task_parallel, lambda loss: loss / batch.num_tasks, parts.autocast)

    return Impl(backward, list(params.values()), lambda: parts.use_task_parallel(parts.task_parallel), extra, step), parts


def compiled(setting: dict, batch: TaskBatch, options: Options, mode: str) -> Impl:
    """metarun with ``hardware.compile=true`` in ``mode``, compiled by one untimed meta-step; raises what
    torch.compile raised."""
    impl = metarun(setting, batch, options, mode, compile=True)[0]
    impl.prepare()
    impl.backward()
    for p in impl.params:
        p.grad = None
    impl.extra["chose"] = mode
    return impl


def metarun_impls(setting: dict, batch: TaskBatch, options: Options, notes: dict) -> dict:
    """metarun's implementations of the setting: auto, every mode it chooses between on this device, and the
    variants; a failed compile goes into ``notes``."""
    auto, parts = metarun(setting, batch, options, "auto")
    impls = {"metarun-auto": auto}
    impls.update({f"metarun-{mode}": metarun(setting, batch, options, mode)[0] for mode in parts.auto_choices()})
    if setting["algo"] == "maml":
        impls["metarun-loop-checkpoint"] = metarun(setting, batch, options, "loop", checkpoint_inner=True)[0]
    if options.device.type == "cuda":
        impls["metarun-auto-bf16"] = metarun(setting, batch, options, "auto", precision="bf16")[0]
        try:
            impls["metarun-compile"] = compiled(setting, batch, options, auto.extra["chose"])
        except Exception as err:  # noqa: BLE001 - torch.compile fails in many ways; the note reports which
            notes["metarun-compile"] = f"skipped: torch.compile failed: {str(err).strip().splitlines()[0]}"
    return impls


def require(module: str):
    """``import module``, or MissingPeer saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingPeer(f"`import {module}` failed ({err}); pip install -e \".[bench]\"") from err


@functools.cache
def learn2learn_maml(root) -> type:
    """learn2learn's ``MAML`` class: from the extracted sdist at ``root`` when given, else the installed package.

    learn2learn 0.2.0 does not build on Python 3.11, and its ``learn2learn/__init__.py`` imports the compiled
    parts; ``algorithms/maml.py``, ``algorithms/base_learner.py`` and ``utils`` are pure Python, so stub
    packages stand in for ``learn2learn`` and ``learn2learn.algorithms`` and only those modules load.
    """
    if root is None:
        try:
            return importlib.import_module("learn2learn").algorithms.MAML
        except ImportError as err:
            raise MissingPeer(f"`import learn2learn` failed and no sdist was given (--learn2learn DIR or "
                              f"METARUN_L2L); get it with: {L2L_COMMAND}") from err
    package = Path(root) / "learn2learn"
    if not (package / "algorithms" / "maml.py").is_file():
        raise MissingPeer(f"{package / 'algorithms' / 'maml.py'} not found; get learn2learn's sdist with: "
                          f"{L2L_COMMAND}, then --learn2learn learn2learn-0.2.0")
    for name, path in (("learn2learn", package), ("learn2learn.algorithms", package / "algorithms")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        sys.modules[name] = stub
    return importlib.import_module("learn2learn.algorithms.maml").MAML


def plain_maml(setting: dict, model: nn.Module, batch: TaskBatch):
    """A hand-written loop over tasks: ``autograd.grad(create_graph=True)`` inner steps on the fast weights
    through ``functional_call``, ``backward()`` per task."""
    names = [name for name, _ in model.named_parameters()]

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            fast = list(model.parameters())
            for _ in range(setting["inner_steps"]):
                loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx,)), sy)
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [w - setting["inner_lr"] * g for w, g in zip(fast, grads)]
            query_loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (qx,)), qy)
            (query_loss / batch.num_tasks).backward()  # frees the task's graph

    return backward


def learn2learn_step(root, setting: dict, model: nn.Module, batch: TaskBatch):
    """learn2learn's MAML as its examples use it: ``clone()`` and ``adapt(loss)`` per task, ``backward()`` per
    task, the accumulated gradients averaged over the meta-batch."""
    learner = learn2learn_maml(root)(model, lr=setting["inner_lr"], first_order=False)

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            clone = learner.clone()
            for _ in range(setting["inner_steps"]):
                clone.adapt(F.cross_entropy(clone(sx), sy))
            F.cross_entropy(clone(qx), qy).backward()
        for p in learner.parameters():
            p.grad.mul_(1.0 / batch.num_tasks)

    return backward


def higher_step(setting: dict, model: nn.Module, batch: TaskBatch):
    """higher's MAML as its example: ``innerloop_ctx(copy_initial_weights=False)`` per task, ``backward()`` per task."""
    higher = require("higher")
    inner = torch.optim.SGD(model.parameters(), lr=setting["inner_lr"])

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(setting["inner_steps"]):
                    diffopt.step(F.cross_entropy(fmodel(sx), sy))
                (F.cross_entropy(fmodel(qx), qy) / batch.num_tasks).backward()

    return backward


def torchopt_step(setting: dict, model: nn.Module, batch: TaskBatch):
    """torchopt's MAML example: ``MetaSGD`` steps on the module, its state restored with ``recover_state_dict``
    after each task, one ``backward()`` of the mean query loss (every task's graph alive until then)."""
    torchopt = require("torchopt")
    inner = torchopt.MetaSGD(model, lr=setting["inner_lr"])

    def backward():
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        inner_state = torchopt.extract_state_dict(inner, by="reference")
        losses = []
        for sx, sy, qx, qy in zip(*batch.tensors()):
            for _ in range(setting["inner_steps"]):
                inner.step(F.cross_entropy(model(sx), sy))
            losses.append(F.cross_entropy(model(qx), qy))
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner, inner_state)
        torch.stack(losses).mean().backward()

    return backward


def conjugate_gradient(matvec, b: torch.Tensor, steps: int) -> torch.Tensor:
    """CG on flat vectors as the iMAML authors' ``cg_solve``: x = 0, ``steps`` iterations (no early stop here)."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r.dot(r)
    for _ in range(steps):
        ap = matvec(p)
        alpha = rr / p.dot(ap)
        x, r = x + alpha * p, r - alpha * ap
        rr_next = r.dot(r)
        p, rr = r + rr_next / rr * p, rr_next
    return x


def plain_imaml(setting: dict, model: nn.Module, batch: TaskBatch):
    """iMAML as its authors' code computes it: per task, SGD steps on the proximal problem with ``autograd.grad``
    on detached fast weights through ``functional_call``, then CG on (I + H/lam) with Hessian-vector products by
    double backward through the support gradient at the solution, the implicit gradient added into ``.grad``."""
    names = [name for name, _ in model.named_parameters()]
    lam, lr = setting["lam"], setting["inner_lr"]

    def loss_at(weights, x, y):
        return F.cross_entropy(functional_call(model, dict(zip(names, weights)), (x,)), y)

    def backward():
        theta = [p.detach() for p in model.parameters()]
        for sx, sy, qx, qy in zip(*batch.tensors()):
            fast = [w.clone().requires_grad_() for w in theta]
            for _ in range(setting["inner_steps"]):
                proximal = sum(((w - t) ** 2).sum() for w, t in zip(fast, theta))
                grads = torch.autograd.grad(loss_at(fast, sx, sy) + 0.5 * lam * proximal, fast)
                fast = [(w - lr * g).detach().requires_grad_() for w, g in zip(fast, grads)]
            query = torch.autograd.grad(loss_at(fast, qx, qy), fast)
            support = torch.autograd.grad(loss_at(fast, sx, sy), fast, create_graph=True)

            def matvec(v):
                pieces = [piece.view_as(w) for piece, w in zip(v.split([w.numel() for w in fast]), fast)]
                hv = torch.autograd.grad(support, fast, grad_outputs=pieces, retain_graph=True)
                return v + torch.cat([h.reshape(-1) for h in hv]) / lam

            flat = conjugate_gradient(matvec, torch.cat([g.reshape(-1) for g in query]), setting["cg_steps"])
            for p, g in zip(model.parameters(), flat.split([w.numel() for w in fast])):
                g = g.view_as(p) / batch.num_tasks
                p.grad = g if p.grad is None else p.grad + g

    return backward


def torchopt_imaml(setting: dict, model: nn.Module, batch: TaskBatch):
    """torchopt's iMAML example: an ``ImplicitMetaGradientModule`` per task whose ``solve`` takes ``torchopt.SGD``
    steps on the proximal objective, reset to the meta-parameters before each task, implicit gradients by its
    linear solver (``solve_cg``, ``cg_steps`` iterations), one ``backward()`` of the mean query loss."""
    torchopt = require("torchopt")
    lam, steps = setting["lam"], setting["inner_steps"]
    solver = torchopt.linear_solve.solve_cg(maxiter=setting["cg_steps"], rtol=0.0, atol=0.0)

    class InnerNet(torchopt.diff.implicit.ImplicitMetaGradientModule, linear_solve=solver):
        def __init__(self, meta_net):
            super().__init__()
            self.meta_net = meta_net
            self.net = torchopt.module_clone(meta_net, by="deepcopy", detach_buffers=True)

        def reset_parameters(self):
            with torch.no_grad():
                for p1, p2 in zip(self.parameters(), self.meta_parameters()):
                    p1.data.copy_(p2.data)
                    p1.detach_().requires_grad_()

        def forward(self, x):
            return self.net(x)

        def objective(self, x, y):
            pairs = zip(self.parameters(), self.meta_parameters())
            proximal = sum(torch.sum(torch.square(p1 - p2)) for p1, p2 in pairs)
            return F.cross_entropy(self(x), y) + 0.5 * lam * proximal

        def solve(self, x, y):
            params = tuple(self.parameters())
            inner = torchopt.SGD(params, lr=setting["inner_lr"])
            with torch.enable_grad():
                for _ in range(steps):
                    loss = self.objective(x, y)
                    inner.zero_grad()
                    loss.backward(inputs=params)
                    inner.step()
            return self

    inner_nets = [InnerNet(model) for _ in range(batch.num_tasks)]

    def backward():
        losses = []
        for inner, (sx, sy, qx, qy) in zip(inner_nets, zip(*batch.tensors())):
            inner.reset_parameters()
            losses.append(F.cross_entropy(inner.solve(sx, sy)(qx), qy))
        torch.stack(losses).mean().backward()

    return backward


def plain_protonet(setting: dict, model: nn.Module, batch: TaskBatch):
    """ProtoNet's episode as the paper's code runs it: one forward of support and query together, prototypes the
    mean support embedding per class, logits the negative squared Euclidean distances, ``backward()`` per episode."""
    support = setting["ways"] * setting["shots"]

    def backward():
        for sx, sy, qx, qy in zip(*batch.tensors()):
            embeddings = model(torch.cat([sx, qx]))
            prototypes = embeddings[:support].view(setting["ways"], setting["shots"], -1).mean(1)
            distances = (embeddings[support:].unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(2)
            (F.cross_entropy(-distances, qy) / batch.num_tasks).backward()

    return backward


def implementations(setting: dict, batch: TaskBatch, options: Options) -> tuple:
    """``({impl: Impl}, {impl: note})`` for the setting: metarun's, then each peer present (on torch's default
    intra-op threads); the notes say why the others are missing."""
    notes = {}
    impls = metarun_impls(setting, batch, options, notes)
    peers = {"protonet": {"plain": plain_protonet},
             "maml": {"plain": plain_maml, "learn2learn": functools.partial(learn2learn_step, options.learn2learn),
                      "higher": higher_step, "torchopt": torchopt_step},
             "imaml": {"plain": plain_imaml, "torchopt": torchopt_imaml}}[setting["algo"]]
    for peer, make in peers.items():
        model = peer_model(setting, options.device)
        try:
            impls[peer] = Impl(make(setting, model, batch), list(model.parameters()),
                               functools.partial(torch.set_num_threads, options.threads))
        except MissingPeer as err:
            notes[peer] = f"skipped: {err}"
    return impls, notes


def synchronize(device) -> None:
    """Wait for queued device work, so timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    """Start a peak-memory measurement; returns the baseline in bytes (None where it cannot be measured)."""
    gc.collect()  # graphs an earlier implementation left in reference cycles would be freed mid-measurement
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    # hand memory freed by earlier measurements back to the system, then reset the peak (VmHWM) to the current
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_kib("VmRSS") * 1024


def peak_mb(device, baseline):
    """Peak memory since ``reset_peak`` above its baseline, in MB."""
    if baseline is None:
        return None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_kib("VmHWM") * 1024
    return round((peak - baseline) / 2**20, 1)


def _proc_kib(field_name: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field_name))
    return int(line.split()[1])


def training_step(impl: Impl):
    """One meta-training step of ``impl``: its own, or clear the gradients, its backward, one Adam step."""
    if impl.step is not None:
        return impl.step
    optimizer = torch.optim.Adam(impl.params, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        impl.backward()
        optimizer.step()

    return step


def timed(impls: dict, options: Options, reps, budget_s: float) -> dict:
    """``{impl: (seconds per step, peak MB, timed rounds, intra-op threads)}``: ``reps[0]`` warm-up steps each
    (peak memory is taken over them), then up to ``reps[1]`` rounds that run every implementation once in turn,
    stopping once they have taken ``budget_s`` (wall time) and there are 2; the fastest round counts, so load
    from other work on a shared machine slows all implementations alike and barely shows."""
    device, now = options.device, options.clock
    steps = {impl: training_step(it) for impl, it in impls.items()}
    peaks, threads, seconds = {}, {}, {impl: [] for impl in impls}
    for impl, step in steps.items():
        impls[impl].prepare()
        threads[impl] = torch.get_num_threads()
        baseline = reset_peak(device)
        for _ in range(reps[0]):
            step()
        synchronize(device)
        peaks[impl] = peak_mb(device, baseline)
    deadline = time.perf_counter() + budget_s
    for done in range(1, reps[1] + 1):
        for impl, step in steps.items():
            impls[impl].prepare()
            start = now()
            step()
            synchronize(device)
            seconds[impl].append(now() - start)
        if done >= 2 and time.perf_counter() > deadline:
            break
    return {impl: (min(seconds[impl]), peaks[impl], len(seconds[impl]), threads[impl]) for impl in impls}


def measure(name: str, setting: dict, options: Options, reps, budget_s: float) -> list:
    """Every implementation on one setting: a JSON-ready dict per measurement and per missing peer."""
    batch = synthetic_batch(setting, options.device)
    impls, notes = implementations(setting, batch, options)
    measured = timed(impls, options, reps, budget_s)
    speed = {impl: setting["meta_batch"] / seconds for impl, (seconds, *_) in measured.items()}
    best_peer = max((impl for impl in PEERS if impl in speed), key=speed.get)
    lines = [dict(setting=name, impl=impl, note=note) for impl, note in notes.items()]
    for impl, (seconds, peak, rounds, threads) in measured.items():
        lines.append(dict(impl=impl, algo=setting["algo"], setting=name, device=str(options.device),
                          network=network(setting),
                          tasks_per_s=round(speed[impl], 3), peak_mem_mb=peak, meta_batch=setting["meta_batch"],
                          seconds_per_step=round(seconds, 4), warmup=reps[0], rounds=rounds,
                          threads=threads, clock="process" if options.clock is time.process_time else "wall",
                          best_peer=best_peer, vs_best_peer=round(speed[impl] / speed[best_peer], 3),
                          load_avg_1min=round(os.getloadavg()[0], 2), **impls[impl].extra))
    return lines


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
