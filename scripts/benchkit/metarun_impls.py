"""metarun's implementations of a setting, each its training step as ``metarun.runner.train`` runs it (``meta_step``:
``task_parallel.meta_backward`` over the algorithm's real ``meta_loss``, then the fused Adam step) with metarun's
own networks: ``auto`` as ``task_parallel.tune`` resolves it, every mapping auto chooses between on the device, MAML
with ``checkpoint_inner``, and on CUDA bf16 and ``hardware.compile``."""

import torch
from omegaconf import OmegaConf

from metarun.algos import imaml, maml, protonet
from metarun.algos.objectives import OBJECTIVES
from metarun.config.algos import IMAMLConfig, MAMLConfig
from metarun.config.run import HardwareConfig, OptimConfig
from metarun.data.tasks import TaskBatch
from metarun.mapping.task_parallel import meta_backward, tune, use_task_parallel
from metarun.models.network import functional_forward
from metarun.runner.components import Components
from metarun.runner.distributed import Group
from metarun.runner.train import TrainState, build_optimizer, meta_step
from metarun.utils import hardware

from .impl import Impl, Options
from .networks import metarun_model

CLASSIFY = OBJECTIVES["classification"]


def metarun(setting: dict, batch: TaskBatch, options: Options, mapping: str, checkpoint_inner: bool = False,
            **overrides) -> tuple:
    """metarun's training step as ``metarun.runner.train`` runs it (``meta_step``: meta-gradient, fused Adam step) and
    its ``Components``: ``hardware.num_threads`` sizes the intra-op threads, and ``mapping="auto"`` is resolved by
    ``metarun.mapping.task_parallel.tune`` (in wall time, as training does)."""
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
    config = OmegaConf.structured(HardwareConfig(device=str(device), task_parallel=mapping,
                                                 num_threads=options.num_threads, **overrides))
    parts = Components(None, CLASSIFY, algorithm, settings, model, forward, params, device, mapping, config,
                       hardware.intra_op_threads(config, model))
    task_fn = parts.per_task(lambda p, *task: algorithm.meta_loss(forward, p, *task, settings, CLASSIFY))
    extra = {}
    if mapping == "auto":
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

    return Impl(backward, list(params.values()), lambda: use_task_parallel(parts, parts.task_parallel), extra, step), parts


def compiled(setting: dict, batch: TaskBatch, options: Options, mapping: str) -> Impl:
    """metarun with ``hardware.compile=true`` and ``mapping``, compiled by one untimed meta-step; raises what
    torch.compile raised."""
    impl = metarun(setting, batch, options, mapping, compile=True)[0]
    impl.prepare()
    impl.backward()
    for p in impl.params:
        p.grad = None
    impl.extra["chose"] = mapping
    return impl


def metarun_impls(setting: dict, batch: TaskBatch, options: Options, notes: dict) -> dict:
    """metarun's implementations of the setting: auto, every mapping it chooses between on this device, and the
    variants; a failed compile goes into ``notes``."""
    auto, parts = metarun(setting, batch, options, "auto")
    impls = {"metarun-auto": auto}
    impls.update({f"metarun-{mapping}": metarun(setting, batch, options, mapping)[0]
                  for mapping in parts.auto_choices()})
    if setting["algo"] == "maml":
        impls["metarun-loop-checkpoint"] = metarun(setting, batch, options, "loop", checkpoint_inner=True)[0]
    if options.device.type == "cuda":
        impls["metarun-auto-bf16"] = metarun(setting, batch, options, "auto", precision="bf16")[0]
        try:
            impls["metarun-compile"] = compiled(setting, batch, options, auto.extra["chose"])
        except Exception as err:  # noqa: BLE001 - torch.compile fails in many ways; the note reports which
            notes["metarun-compile"] = f"skipped: torch.compile failed: {str(err).strip().splitlines()[0]}"
    return impls
