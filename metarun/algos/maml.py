"""MAML: Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML,
with the MAML++ options of Antoniou, Edwards & Storkey (2019), "How to train your MAML", ICLR.

Protocol: adapt with ``inner_steps`` steps of SGD at ``inner_lr`` on the support set, score the adapted
parameters on the query set, and meta-learn the initialisation by differentiating that query loss through
the inner loop (second order). ``first_order`` (FOMAML, section 5.2) treats the inner gradients as constants,
so the meta-gradient is the query gradient at the adapted parameters. Meta-test adapts with
``test_inner_steps``. Every function is pure over a parameter dict and handles one task;
``metarun.mapping.task_parallel`` maps it over the meta-batch.

MAML++ options, each off by default (section 4 of Antoniou et al.):
    multi_step_loss (MSL): the query loss after every inner step, weighted; the weights start uniform and
        anneal towards the last step over ``msl_iterations``.
    learned_lrs (LSLR): one learned inner learning rate per parameter tensor and inner step,
        ``meta/lr/<name>`` of shape [inner_steps], initialised at ``inner_lr``.
    per_step_bn (BNWB): batch-norm weights and biases per inner step, ``meta/bn/<name>`` of shape
        [inner_steps + 1, C]; step i's forward uses copy i and they are meta-learned, not adapted. MAML++'s
        per-step running statistics (BNRS) are never used for normalisation in its reference code (it always
        normalises with batch statistics), so metarun keeps batch statistics and no running averages.
    first_order_iterations (DA): first order for the first N outer iterations, then second order.
The cosine outer learning rate (CA) is ``optim.schedule=cosine``, in the training loop.

``checkpoint_inner`` trades compute for memory: each inner step is recomputed in the backward pass instead of
keeping its activations (``metarun.algos.inner_loop.recomputed``); the meta-gradient is the same. The inner
SGD steps themselves are ``metarun.algos.inner_loop``'s, shared by the MAML family.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from metarun.algos.base import MAPPINGS, Algorithm
from metarun.algos.inner_loop import Forward, Params, trajectory
from metarun.algos.objectives import Objective
from metarun.config.algos import MAMLConfig
from metarun.models.batchnorm import BatchNorm2d

# meta-learned tensors that are not model parameters carry this prefix; they never reach the model
META = "meta/"
NORMS = (BatchNorm2d, torch.nn.modules.batchnorm._NormBase)  # layers whose weights MAML++ keeps per step
LR, BN = f"{META}lr/", f"{META}bn/"


def meta_params(model: torch.nn.Module, settings) -> Params:
    """The meta-learned tensors: the model's parameters, plus MAML++'s per-step BN and learned learning rates."""
    params = dict(model.named_parameters())
    if settings.per_step_bn:
        norms = {name for name, module in model.named_modules() if isinstance(module, NORMS)}
        for name in [n for n in params if n.rsplit(".", 1)[0] in norms]:
            copies = params.pop(name).detach().expand(settings.inner_steps + 1, -1).clone()
            params[f"{BN}{name}"] = torch.nn.Parameter(copies)
    if settings.learned_lrs:
        # one scalar per parameter tensor and inner step (LSLR)
        params.update({f"{LR}{name}": torch.nn.Parameter(torch.full((settings.inner_steps,), settings.inner_lr,
                                                                     device=p.device))
                       for name, p in list(params.items()) if not name.startswith(META)})
    return params


def split_for_inner_loop(forward: Forward, params: Params, settings,
                         trainable: Callable[[str], bool] = lambda name: True):
    """Split ``params`` for the inner loop.

    Returns:
        (fast, forward_at, lr_at): the parameters the inner loop updates; ``forward_at(i)``, the forward at
        inner step i with everything else (frozen layers, step i's batch norm) filled in; ``lr_at(i)``, the
        inner learning rate at step i (a float or a dict per fast parameter). Learned tensors with fewer
        entries than steps reuse their last entry for later steps.
    """
    per_step = {name[len(BN):]: t for name, t in params.items() if name.startswith(BN)}
    lrs = {name[len(LR):]: t for name, t in params.items() if name.startswith(LR)}
    weights = {name: t for name, t in params.items() if not name.startswith(META)}
    fast = {name: t for name, t in weights.items() if trainable(name)}
    frozen = {name: t for name, t in weights.items() if not trainable(name)}

    def forward_at(step: int) -> Forward:
        at_step = {name: t[min(step, len(t) - 1)] for name, t in per_step.items()}
        return lambda p, x: forward({**frozen, **at_step, **p}, x)

    def lr_at(step: int):
        return {name: lrs[name][min(step, len(lrs[name]) - 1)] for name in fast} if lrs else settings.inner_lr

    return fast, forward_at, lr_at


def head_prefix(params: Params) -> str:
    """The parameter-name prefix of the head: the last model parameter's layer (every backbone's linear head)."""
    last = [name for name in params if not name.startswith(META)][-1]
    return last.rsplit(".", 1)[0] + "."


def with_task_head(forward, params: Params, support_x, support_y, settings) -> Params:
    """``params`` with the head a task starts its inner loop from (``settings.head_init``): the meta-learned one, zeros,
    or Proto-MAML's, the linear form of the prototype classifier (row c: weight 2·p_c, bias -|p_c|², p_c the mean
    support embedding of class c), through which the meta-gradient reaches the embedding."""
    if settings.head_init == "learned":
        return params
    prefix = head_prefix(params)
    weight, bias = params[f"{prefix}weight"], params[f"{prefix}bias"]
    if settings.head_init == "zero":
        return {**params, f"{prefix}weight": torch.zeros_like(weight), f"{prefix}bias": torch.zeros_like(bias)}
    embedded = forward.embed(params, support_x)
    onehot = (support_y.unsqueeze(1) == torch.arange(len(bias), device=support_y.device)).to(embedded.dtype)
    prototypes = onehot.T @ embedded / onehot.sum(0).clamp(min=1).unsqueeze(1)
    return {**params, f"{prefix}weight": 2 * prototypes, f"{prefix}bias": -prototypes.square().sum(1)}


def step_weights(settings, iteration) -> list:
    """MSL's per-step query-loss weights at ``iteration`` (an int, or a 0-d tensor on the device, whose weights are
    then computed there): uniform at first, annealed onto the last step."""
    steps = settings.inner_steps
    if not settings.multi_step_loss:
        return [0.0] * (steps - 1) + [1.0]
    # MAML++'s schedule: earlier steps decay linearly from 1/N to a floor of 0.03/N, the last step takes the rest;
    # in float64 as Python's floats, so the device's weights round to float32 as the host's do
    progress = (torch.as_tensor(iteration, dtype=torch.float64) / settings.msl_iterations).clamp(max=1.0)
    early = ((1.0 - progress) / steps).clamp(min=0.03 / steps)
    earlier = [early] * (steps - 1)
    weights = earlier + [1.0 - sum(earlier, torch.zeros_like(early))]  # a tensor even for one step
    return [w.float() for w in weights] if isinstance(iteration, torch.Tensor) else [w.item() for w in weights]


@dataclass
class MAMLIteration(MAMLConfig):
    """The settings of one outer iteration: MSL's per-step query-loss weights and the annealed derivative order."""

    step_weights: Optional[List[float]] = None


def at_iteration(settings: MAMLConfig, iteration: int, clock=None) -> MAMLIteration:
    """The settings for outer ``iteration``: derivative-order annealing and the multi-step loss weights (computed on
    the device from ``clock``, the iteration as a tensor there, when given: a captured iteration replays them)."""
    first_order = settings.first_order or iteration <= settings.first_order_iterations
    return MAMLIteration(**{**vars(settings), "first_order": first_order},
                         step_weights=step_weights(settings, iteration if clock is None else clock))


def meta_loss(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings, objective: Objective,
              trainable=lambda name: True):
    """Query loss (weighted over inner steps under MSL) and final-step metric of one task after the inner loop.

    ``settings`` are the algorithm's settings or their ``at_iteration`` form; without ``step_weights`` only the last
    step counts.
    """
    params = with_task_head(forward, params, support_x, support_y, settings)
    fast, forward_at, lr_at = split_for_inner_loop(forward, params, settings, trainable)
    path = trajectory(forward_at, fast, support_x, support_y, lr_at, settings.inner_steps, objective.loss,
                      settings.first_order, getattr(settings, "checkpoint_inner", False))
    weights = getattr(settings, "step_weights", None) or [0.0] * (settings.inner_steps - 1) + [1.0]
    predictions = forward_at(settings.inner_steps)(path[-1], query_x)
    # a tensor weight (MSL's, computed on the device) is never zero: its floor is 0.03/N
    earlier = sum(w * objective.loss(forward_at(step)(path[step], query_x), query_y)
                  for step, w in enumerate(weights[:-1], start=1) if isinstance(w, torch.Tensor) or w)
    loss = weights[-1] * objective.loss(predictions, query_y) + earlier
    return loss, objective.metric(predictions, query_y)


def meta_test_path(forward: Forward, params: Params, support_x, support_y, settings, objective: Objective, trainable):
    """Meta-test adaptation: the fast parameters after 0 .. ``test_inner_steps`` steps, and ``forward_at``."""
    params = with_task_head(forward, params, support_x, support_y, settings)
    fast, forward_at, lr_at = split_for_inner_loop(forward, params, settings, trainable)
    path = trajectory(forward_at, fast, support_x, support_y, lr_at, settings.test_inner_steps, objective.loss, True)
    return path, forward_at


def evaluate_task(forward: Forward, params: Params, support_x, support_y, query_x, query_y, settings,
                  objective: Objective, trainable=lambda name: True):
    """Query metric of one task after 0, 1, ..., ``test_inner_steps`` test-time inner steps: [steps + 1]."""
    path, forward_at = meta_test_path(forward, params, support_x, support_y, settings, objective, trainable)
    return torch.stack([objective.metric(forward_at(step)(p, query_x), query_y) for step, p in enumerate(path)])


def predict(forward: Forward, params: Params, support_x, support_y, query_x, settings, objective: Objective,
            trainable=lambda name: True):
    """Query predictions after ``test_inner_steps`` test-time inner steps on the support set."""
    path, forward_at = meta_test_path(forward, params, support_x, support_y, settings, objective, trainable)
    return forward_at(len(path) - 1)(path[-1], query_x)


def runs_in(settings) -> tuple:
    """The task mappings of the MAML family: a loop alone with ``checkpoint_inner``, as torch's checkpoint
    runs neither under vmap nor with per-task gradients from threads."""
    return ("loop",) if settings.checkpoint_inner else MAPPINGS


def check(run_cfg) -> None:
    """Refuse per-step batch norm with running averages (MAML++'s per-step weights normalise with batch statistics)
    or with prototype heads (the embedding would have no step's weights)."""
    per_step_bn = run_cfg.algo.get("per_step_bn", False)  # MAML's key; ANIL and Meta-SGD share this check
    if per_step_bn and run_cfg.model.get("norm") == "running":
        raise ValueError("algo.per_step_bn=true normalises each inner step with its own batch statistics; "
                         "use model.norm=batch with it (running averages are for model.norm=running alone)")
    if per_step_bn and run_cfg.algo.get("head_init") == "prototypes":
        raise ValueError("algo.head_init=prototypes embeds the support set with the model's own batch-norm weights, "
                         "which algo.per_step_bn=true replaces per inner step; set one of them off")


ALGORITHM = Algorithm(meta_loss, evaluate_task, predict, MAMLConfig, meta_params=meta_params, at_iteration=at_iteration,
                      check=check, runs_in=runs_in, pads=True)
