"""metarun's implementations of a setting, each its training step as ``metarun.runner.train`` runs it (``meta_step``:
``task_parallel.meta_backward`` over the algorithm's real ``meta_loss``, then the fused Adam step) with metarun's
own networks, the algorithm and its settings composed from conf/algo/<algo>.yaml with the setting's values
(``algorithms``): ``auto`` as ``task_parallel.tune`` resolves it, every mapping auto chooses between on the device,
MAML with ``checkpoint_inner``, the setting's variants (``settings.VARIANTS``: ``hardware.vmap_chunk``,
``algo.embedding_pass=joint``), the layout ``hardware.channels_last=auto`` did not choose, bf16 on CUDA and on a
CPU with AMX, and on CUDA ``hardware.cuda_graphs=true`` (the meta-step captured and replayed, on auto's mapping)
and ``hardware.compile``."""

from typing import Optional

import torch
from omegaconf import OmegaConf

from metarun.algos.maml import META
from metarun.algos.objectives import OBJECTIVES
from metarun.config.run import HardwareConfig, OptimConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.chunks import starting_chunk
from metarun.mapping.task_parallel import meta_backward, tune, use_task_parallel
from metarun.models.layout import lay_out_channels_last
from metarun.models.network import channels_last, functional_forward
from metarun.runner import captured
from metarun.runner.components import Components
from metarun.runner.distributed import Group
from metarun.runner.train import TrainState, build_optimizer, meta_step
from metarun.utils import hardware

from .algorithms import algorithm_settings
from .impl import Impl, Options
from .networks import copy_into, metarun_model

CLASSIFY = OBJECTIVES["classification"]
# on a CPU with AMX (oneDNN's bf16 kernels), the algorithms whose bf16 step the benchmark times: those
# hardware.precision=auto has been measured for (hardware.BF16_ON_AMX and the one it leaves out, MAML)
CPU_BF16 = hardware.BF16_ON_AMX | {"maml"}


def components(setting: dict, options: Options, mapping: str, extras: Optional[list], algo: Optional[dict] = None,
               **overrides) -> Components:
    """The setting's ``Components`` as a run builds them, with the ``algo`` keys changed as ``algo.KEY=VALUE`` and
    the ``hardware`` keys ``overrides``, on metarun's network from the peers' weights; its own learned tensors
    (``meta/...``) start from ``extras``, the plain loop's, in order (None: there is no plain loop, they keep
    metarun's start)."""
    device = options.device
    algorithm, settings = algorithm_settings(setting, **(algo or {}))
    config = OmegaConf.structured(HardwareConfig(device=str(device), task_parallel=mapping,
                                                 num_threads=options.num_threads, **overrides))
    model = metarun_model(setting, device)
    if channels_last(config.channels_last, settings, device, setting["shape"], config.num_threads):  # as build_network
        model = lay_out_channels_last(model)
    params = {name: p.detach().clone().requires_grad_() for name, p in algorithm.meta_params(model, settings).items()}
    if extras is not None:
        copy_into(zip([p for name, p in params.items() if name.startswith(META)], extras, strict=True))
    return Components(None, CLASSIFY, algorithm, settings, model, functional_forward(model), params, device, mapping,
                      config, hardware.intra_op_threads(config, model), algorithm.runs_in(settings),
                      vmap_chunk=starting_chunk(config.vmap_chunk),
                      precision=hardware.precision(config, device, setting["algo"]))


def tuned(parts: Components, task_fn, batch: TaskBatch, job_tasks: int) -> dict:
    """Resolve ``parts``' auto mapping with ``task_parallel.tune`` for a job of ``job_tasks`` tasks (``Options``'s: a
    long training run's million, where the 10 s cap bounds the race, not the job's 5%); returns what it chose and
    what that cost."""
    choice = tune(parts, task_fn, parts.params, lambda n: TaskBatch(*(t[:n] for t in batch.tensors())), job_tasks)
    return {"chose": parts.task_parallel, "tune_s": {k: round(v, 4) for k, v in choice["seconds"].items()},
            "tune_cost_s": round(choice["cost"], 2), "tune_why": choice["why"]}


def metarun(setting: dict, batch: TaskBatch, options: Options, mapping: str, extras: Optional[list],
            algo: Optional[dict] = None, **overrides) -> tuple:
    """metarun's training step as ``metarun.runner.train`` runs it (``meta_step``: meta-gradient, fused Adam step)
    and its ``Components`` (``algo``, ``overrides``: see ``components``): ``hardware.num_threads`` sizes the
    intra-op threads, and ``mapping="auto"`` is resolved by ``metarun.mapping.task_parallel.tune`` (in wall time,
    as training does)."""
    parts = components(setting, options, mapping, extras, algo, **overrides)
    # the settings of the setting's outer iteration, as training's ``Annealed`` hands them to the per-task function
    current = parts.algorithm.at_iteration(parts.settings, setting.get("iteration", 1))
    task_fn = parts.per_task(lambda p, *task: parts.algorithm.meta_loss(parts.forward, p, *task, current, CLASSIFY))
    extra = tuned(parts, task_fn, batch, options.job_tasks) if mapping == "auto" else {}
    optimizer, scheduler = build_optimizer(OmegaConf.structured(OptimConfig()), parts.params, iterations=1)
    state = TrainState(parts.params, optimizer, scheduler, hardware.grad_scaler(parts.hardware, parts.device),
                       torch.Generator(parts.device))

    def step():
        return meta_step(parts, state, task_fn, batch, batch.num_tasks, None, Group())

    if parts.hardware.cuda_graphs:  # warmed up, captured and replayed as training's iterations are
        captured.device_learning_rates(state.optimizer, parts.device)
        replays, eager_step = captured.Replays("the meta-step", False, state.generator), step
        step = lambda: replays(None, eager_step)  # noqa: E731 - the setting's settings are fixed: one graph

    def backward():
        meta_backward(task_fn, parts.params, batch, parts.task_parallel, lambda loss: loss / batch.num_tasks,
                      parts.autocast, parts.vmap_chunk)

    def workers() -> int:
        return hardware.available_cores() if parts.task_parallel == "threads" else 1

    impl = Impl(backward, list(parts.params.values()), lambda: use_task_parallel(parts, parts.task_parallel), extra,
                step, workers, overrides.get("precision", "fp32"))
    return impl, parts


def compiled(setting: dict, batch: TaskBatch, options: Options, mapping: str, extras: Optional[list]) -> Impl:
    """metarun with ``hardware.compile=true`` and ``mapping``, compiled by one untimed meta-step; raises what
    torch.compile raised."""
    impl = metarun(setting, batch, options, mapping, extras, compile=True)[0]
    impl.prepare()
    impl.backward()
    for p in impl.params:
        p.grad = None
    impl.extra["chose"] = mapping
    return impl


def variant_impls(setting: dict, batch: TaskBatch, options: Options, extras: Optional[list], choices: tuple) -> dict:
    """The lines of the setting's ``variants`` (``settings.VARIANTS``), each with the key it changes in its line:
    metarun-auto-joint (``algo.embedding_pass=joint``) and, where vmap is among the mappings ``choices``,
    metarun-vmap-chunk (``hardware.vmap_chunk``: a quarter of the meta-batch, at least 1)."""
    impls = {}
    if "joint" in setting["variants"]:
        impls["metarun-auto-joint"] = metarun(setting, batch, options, "auto", extras, {"embedding_pass": "joint"})[0]
        impls["metarun-auto-joint"].extra["embedding_pass"] = "joint"
    if "vmap-chunk" in setting["variants"] and "vmap" in choices:
        chunk = max(1, setting["meta_batch"] // 4)
        impls["metarun-vmap-chunk"] = metarun(setting, batch, options, "vmap", extras, vmap_chunk=chunk)[0]
        impls["metarun-vmap-chunk"].extra["vmap_chunk"] = chunk
    return impls


def metarun_impls(setting: dict, batch: TaskBatch, options: Options, notes: dict, extras: Optional[list]) -> dict:
    """metarun's implementations of the setting, their learned tensors starting from ``extras`` (see
    ``components``): auto, every mapping it chooses between on this device, and the variants; a failed compile goes
    into ``notes``."""
    auto, parts = metarun(setting, batch, options, "auto", extras)
    impls = {"metarun-auto": auto}
    impls.update({f"metarun-{mapping}": metarun(setting, batch, options, mapping, extras)[0]
                  for mapping in parts.auto_choices()})
    if setting["algo"] == "maml":
        impls["metarun-loop-checkpoint"] = metarun(setting, batch, options, "loop", extras,
                                                   {"checkpoint_inner": True})[0]
    impls.update(variant_impls(setting, batch, options, extras, parts.auto_choices()))
    if options.device.type == "cuda" or hardware.has_amx() and setting["algo"] in CPU_BF16:
        impls["metarun-auto-bf16"] = metarun(setting, batch, options, "auto", extras, precision="bf16")[0]
    # the other layout than hardware.channels_last=auto's: what auto's choice gains (a GPU's stays contiguous until
    # this line shows what channels-last gains there)
    laid_out = channels_last(parts.hardware.channels_last, parts.settings, options.device, setting["shape"],
                             parts.hardware.num_threads)
    impls[f"metarun-auto-{'contiguous' if laid_out else 'channels-last'}"] = metarun(
        setting, batch, options, "auto", extras, channels_last=not laid_out)[0]
    if options.device.type == "cuda":
        impls["metarun-cuda-graphs"] = metarun(setting, batch, options, auto.extra["chose"], extras, cuda_graphs=True)[0]
        try:
            impls["metarun-compile"] = compiled(setting, batch, options, auto.extra["chose"], extras)
        except Exception as err:  # noqa: BLE001 - torch.compile fails in many ways; the note reports which
            notes["metarun-compile"] = f"skipped: torch.compile failed: {str(err).strip().splitlines()[0]}"
    return impls
