"""The outer loop, top to bottom: sample → meta-step (meta-gradient, clip, optimiser step, schedule) → log →
validate (keep the best) → checkpoint, then meta-test the best checkpoint on fixed episodes and write
results.json. ``TrainState`` is what the loop changes and a checkpoint keeps."""

import math
import time
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from metarun.config.validate import check
from metarun.logging import build_loggers, check_trackers
from metarun.logging.console import Progress, show_progress
from metarun.logging.episodes import FILE_NAME as EPISODES_FILE
from metarun.logging.results import write_results
from metarun.logging.table import metric_text
from metarun.mapping import remembered
from metarun.mapping.chunks import fitted, halved_if_halvable
from metarun.mapping.task_parallel import meta_backward, tune, use_task_parallel
from metarun.models.batchnorm import evaluating, has_running_stats, recording
from metarun.models.network import describe
from metarun.runner import captured, distributed
from metarun.runner.checkpoint import (
    Checkpoint,
    CorruptCheckpoint,
    initialise_from,
    load_checkpoint,
    restore_buffers,
    save_checkpoint,
)
from metarun.runner.components import Components, build_components
from metarun.runner.evaluate import episodes_writer, evaluate, source_table
from metarun.runner.preemption import PreemptionGuard
from metarun.runner.run_dir import RunDirectory
from metarun.utils import hardware
from metarun.utils.errors import RunError

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
# the keys a resumed run must share with its checkpoint (others, such as hardware and logger, may change)
RESUME_KEYS = ("algo", "dataset", "model", "train", "optim", "seed")
# what a resume may change: where training stops, not what it does on the way
STOP_KEYS = ("train.iterations", "train.max_minutes", "train.diverge_factor", "train.max_loss")
# learning-rate shapes over training progress in [0, 1], scaled from optim.lr (1) to optim.final_lr (0)
SCHEDULES = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def build_optimizer(cfg, params: dict, iterations: int):
    """The meta-optimiser over ``params`` and its per-iteration learning-rate schedule."""
    # fused: one kernel over all tensors; on the CPU Adam's step takes a quarter of the per-tensor loop's time
    optimizer = OPTIMIZERS[cfg.name](params.values(), lr=cfg.lr, fused=True)
    if cfg.schedule == "step":  # Snell et al.: halve every 2,000 episodes
        factor = lambda step: cfg.gamma ** (step // cfg.step_every)  # noqa: E731
    else:
        final, shape = cfg.final_lr / cfg.lr, SCHEDULES[cfg.schedule]
        factor = lambda step: final + (1.0 - final) * shape(min(step / iterations, 1.0))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run(cfg: DictConfig) -> float:
    """Meta-train and meta-test one configuration in ``paths.output_dir``; return the last validation metric."""
    check(cfg)
    # a tracker without its package, or whose store or folder cannot be written, stops the run before the data loads
    check_trackers(cfg.logger)
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    group = distributed.setup(cfg.hardware, run_dir)
    show_progress(cfg.logger.console and group.is_main)
    try:
        # one process per run directory; the resume is checked before .hydra/ is rewritten, so a refused
        # command leaves the record of the run the directory holds
        with RunDirectory(run_dir, group) as directory:
            state = resume_state(cfg, run_dir / "checkpoints")
            directory.record(cfg)
            metric = train(cfg, run_dir, group, started, state)
        # ranks leave together: none tears down its side of gloo's connections while a peer is still in its last
        # collective (a rank aborted there once, in CI); a failed rank skips this, as its peers may never arrive
        group.barrier()
        return metric
    finally:
        distributed.close(group)


def resume_state(cfg: DictConfig, checkpoints: Path) -> Optional[Checkpoint]:
    """The checkpoint state (on the CPU) this run continues from, or None for a fresh start.

    Raises:
        FileNotFoundError: ``resume=true`` without a checkpoint.
        ValueError: the checkpoint belongs to another run (algorithm, seed, ... differ).
    """
    last = checkpoints / "last.pt"
    # auto: continue when the run directory already holds a checkpoint (a requeued SLURM job, a rerun)
    if cfg.resume is True and not last.is_file():
        raise FileNotFoundError(f"resume=true but {last} does not exist; point paths.output_dir (hydra.run.dir) "
                                "at the run directory to continue, or drop resume=true")
    if cfg.resume is False or not last.is_file():
        return None
    state = readable_checkpoint(last, checkpoints / "best.pt", cfg.trust_checkpoint)
    # a resumed run must be the same run: anything that shapes training has to match the checkpoint's config,
    # but for where it stops (train.iterations may grow: "train longer")
    current = OmegaConf.to_container(cfg, resolve=True)
    saved = with_new_keys({k: state.config.get(k) for k in RESUME_KEYS}, cfg)
    changed = {key: (old, new) for key, old, new in differences(saved, {k: current[k] for k in RESUME_KEYS})
               if key not in STOP_KEYS or key == "train.iterations" and new < state.iteration}
    if changed:
        listed = ", ".join(f"{key} ({old} in the checkpoint, {new} now)" for key, (old, new) in changed.items())
        raise ValueError(f"resume={str(cfg.resume).lower()} but {listed} differ from the run in {last}; only "
                         f"{', '.join(STOP_KEYS)} may change (train.iterations not below the {state.iteration} done): "
                         "resume with the original overrides (see .hydra/overrides.yaml in the run directory), "
                         "or start over in a new run directory")
    return state


def with_new_keys(saved: dict, cfg: DictConfig) -> dict:
    """``saved`` (a checkpoint's groups) with the keys added to their schemas since it was written, at the schemas'
    defaults: what that run ran (``model.depth`` 4 for a Conv-4 saved before depth was a key). So such a
    checkpoint resumes, and a new key set otherwise on the command line is named as a difference."""
    filled = dict(saved)  # each group filled is a new dict: the checkpoint's own stay as they are
    for group, values in saved.items():
        schema = OmegaConf.get_type(cfg[group]) if isinstance(cfg.get(group), DictConfig) else None
        if not (isinstance(values, dict) and is_dataclass(schema)):
            continue
        defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
        # an interpolation or a mandatory value (???) says nothing of what the old run ran
        known = {key: value for key, value in defaults.items() if not (isinstance(value, str) and
                                                                       ("${" in value or value == "???"))}
        filled[group] = {**known, **values}
    return filled


def differences(old: dict, new: dict, prefix: str = "") -> list:
    """(dotted key, old value, new value) of every leaf that differs between two nested config dicts."""
    found = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def readable_checkpoint(last: Path, best: Path, trusted: bool) -> Checkpoint:
    """``last``'s state, or ``best``'s when ``last`` is corrupt (both are full training states); a file that asks
    for code is refused, never passed over (``trusted``: load it)."""
    try:
        return load_checkpoint(last, trusted=trusted)
    except CorruptCheckpoint as err:
        try:
            state = load_checkpoint(best, trusted=trusted)
        except (CorruptCheckpoint, FileNotFoundError):
            raise RunError(f"{last} is unreadable (truncated or corrupt) and no readable best.pt is kept beside it; "
                           "start over with resume=false or in a new hydra.run.dir") from err
    print(f"warning: {last} is unreadable (truncated or corrupt); resuming from {best} (iteration "
          f"{state.iteration}), the newest good checkpoint kept")
    return state


@dataclass
class TrainState:
    """What training changes as it goes, and what a checkpoint must keep to continue it exactly."""

    params: dict  # the meta-learned tensors (the optimiser updates them in place)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the training stream of tasks, its own so evaluation episodes never shift it
    iteration: int = 0  # the last outer iteration done
    best: Optional[dict] = None  # {"value", "iteration"} of the best validation
    val: dict = field(default_factory=dict)  # the last validation's results
    first_loss: Optional[torch.Tensor] = None  # the run's first train loss (TrainMeans sets it), kept on resume

    @classmethod
    def create(cls, cfg: DictConfig, params: dict, device: torch.device) -> "TrainState":
        """The state of a fresh run: the optimiser and schedule of ``optim``, the stream seeded from ``seed``."""
        optimizer, scheduler = build_optimizer(cfg.optim, params, cfg.train.iterations)
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed)
        return cls(params, optimizer, scheduler, hardware.grad_scaler(cfg.hardware, device), generator)

    def state_dict(self) -> dict:
        """The checkpoint fields this state owns."""
        device = self.generator.device.type
        return {
            "iteration": self.iteration,
            "params": {name: p.detach() for name, p in self.params.items()},
            "optimizer": captured.eager_state(self.optimizer.state_dict()),
            "scheduler": captured.eager_state(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(), "device": device,
                    "cuda": torch.cuda.get_rng_state_all() if device == "cuda" else None},
            "best": self.best, "val": self.val,
            "first_loss": None if self.first_loss is None else float(self.first_loss),
        }

    def load_state_dict(self, saved: dict, seed: int) -> None:
        """Continue from ``saved`` (``state_dict``'s fields, e.g. of a ``Checkpoint``); a stream saved on another
        device type is reseeded from ``seed``."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(saved["params"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        device = self.generator.device.type
        if saved["rng"]["device"] == device:
            self.generator.set_state(saved["rng"]["generator"])
            if saved["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        else:
            # a CUDA generator's state does not load into a CPU one, nor the reverse: a stream seeded from the
            # seed and the iteration keeps the resumed run reproducible, though no longer the uninterrupted one
            self.generator.manual_seed(seed + saved["iteration"])
            print(f"resumed on {device} from a checkpoint written on {saved['rng']['device']}: the training "
                  f"stream is reseeded, so from iteration {saved['iteration'] + 1} the run differs from one that "
                  "stayed there")
        self.iteration, self.best, self.val = saved["iteration"], saved["best"], saved["val"]
        if saved.get("first_loss") is not None:  # None: a checkpoint from before train.diverge_factor
            self.first_loss = torch.tensor(saved["first_loss"], device=self.generator.device)


class Annealed:
    """The algorithm's settings of the current outer iteration, read by the per-task function (``at``
    replaces them each iteration when the algorithm anneals something)."""

    def __init__(self, parts: Components, clock: Optional[torch.Tensor] = None):
        """Start from the run's settings; ``clock``: a captured run's iteration counter on the device, from which
        ``on_device`` computes the annealed numbers inside the graph."""
        self.algorithm, self.base, self.current = parts.algorithm, parts.settings, parts.settings
        self.clock, self.iteration = clock, 0

    def at(self, iteration: int) -> None:
        """Use the settings of outer ``iteration``."""
        self.iteration = iteration
        self.current = self.algorithm.at_iteration(self.base, iteration)
        if self.clock is not None:
            self.clock.fill_(iteration)  # a kernel with the value as its argument: no copy, no wait

    def on_device(self) -> None:
        """The current iteration's settings with their annealed numbers computed from ``clock`` (a captured
        iteration's first work, so every replay computes them anew)."""
        self.current = self.algorithm.at_iteration(self.base, self.iteration, self.clock)

    def shape(self) -> tuple:
        """What of the current settings shapes the computation: all but numbers (floats, lists of them, tensors),
        which ``on_device`` computes in the graph. A captured run keeps one graph per shape."""
        def number(value) -> bool:
            return isinstance(value, (float, torch.Tensor)) or \
                isinstance(value, (list, tuple)) and bool(value) and all(map(number, value))
        return tuple((key, value) for key, value in vars(self.current).items() if not number(value))


def meta_step(parts: Components, state: TrainState, task_fn, batch, meta_batch_size: int, grad_clip, group) -> tuple:
    """One outer update from this rank's tasks ``batch`` of a meta-batch of ``meta_batch_size``: the meta-gradient
    of the mean task loss (summed over the ranks of ``group``), clipped to ``grad_clip``, and an optimiser step (the
    schedule steps after it, outside a captured iteration). Returns this rank's share of the mean loss and metric
    (tensors, no host sync)."""
    state.optimizer.zero_grad(set_to_none=True)
    # divided by the whole meta-batch, so summing over ranks gives the mean over all tasks
    losses, task_metrics = meta_backward(
        task_fn, state.params, batch, parts.task_parallel,
        lambda task_loss: state.scaler.scale(task_loss / meta_batch_size), parts.autocast, parts.vmap_chunk)
    group.reduce_gradients(state.params)
    state.scaler.unscale_(state.optimizer)  # clip the true gradients (fp16 scales them; otherwise a no-op)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(state.params.values(), grad_clip)
    state.scaler.step(state.optimizer)  # fp16: skipped when the scaled gradients overflowed
    state.scaler.update()
    return losses.sum() / meta_batch_size, task_metrics.sum() / meta_batch_size


def record_statistics(parts: Components, batch, backbone: dict) -> None:
    """model.norm=running: batch norm's averages follow the meta-parameters on the whole meta-batch (the same on
    every rank), outside the differentiated step."""
    with torch.no_grad(), recording(parts.model):
        parts.forward(backbone, torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1))


class TrainMeans:
    """The train loss and metric summed on the device between log lines, and the first iteration whose loss is
    non-finite or diverging: tracked on the device so the hot loop never waits on a host sync."""

    def __init__(self, device: torch.device, state: TrainState, train_cfg):
        """Empty sums since ``state``'s iteration; ``train_cfg``'s diverge_factor and max_loss bound the loss."""
        self.loss, self.metric = torch.zeros((), device=device), torch.zeros((), device=device)
        self.first_bad, self.bad_loss = torch.tensor(-1, device=device), torch.zeros((), device=device)
        self.state, self.logged_at = state, state.iteration
        self.factor, self.max_loss = train_cfg.diverge_factor, train_cfg.max_loss
        self.limit = torch.tensor(self.max_loss or math.inf, device=device)
        # a run resumed from a checkpoint older than train.diverge_factor has no first loss: the loss it resumes at
        # (perhaps long converged) would be no yardstick, so only train.max_loss bounds it
        self.measure_first = state.first_loss is None and state.iteration == 0
        if state.first_loss is not None:
            self._bound_by(state.first_loss)

    def _bound_by(self, first_loss: torch.Tensor) -> None:
        """Limit the loss to ``diverge_factor`` times ``first_loss`` too (when both are set and the loss positive)."""
        if self.factor:
            self.limit = torch.where(first_loss > 0, torch.minimum(self.limit, self.factor * first_loss), self.limit)

    def add(self, totals: torch.Tensor, iteration: int) -> None:
        """Add one iteration's [loss, metric]."""
        loss = totals[0]
        if self.measure_first:  # the run's first iteration: the yardstick of train.diverge_factor
            self.state.first_loss, self.measure_first = loss.detach().clone(), False
            self._bound_by(self.state.first_loss)
        bad = (~torch.isfinite(loss) | (loss > self.limit)) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, iteration, self.first_bad)
        self.bad_loss = torch.where(bad, loss, self.bad_loss)
        self.loss += loss
        self.metric += totals[1]

    def ensure_healthy(self, last_path: Path) -> None:
        """Stop the run at a non-finite or diverging loss, naming the iteration, the checkpoint kept and the fix."""
        iteration = self.first_bad.item()
        if iteration < 0:
            return
        loss = self.bad_loss.item()
        if math.isfinite(loss):
            # a run resumed from a checkpoint without a first loss is bounded by train.max_loss alone
            if self.max_loss and loss > self.max_loss:
                bound = f"train.max_loss={self.max_loss:g}"
            else:
                first = float(self.state.first_loss)
                bound = f"train.diverge_factor={self.factor:g} times the first iteration's {first:.3g}"
            what = f"train loss {loss:.3g} at iteration {iteration}, past {bound} (diverging)"
        else:
            what = f"non-finite train loss at iteration {iteration}"
        kept = f"the last good checkpoint is {last_path}" if last_path.exists() else "no checkpoint was written"
        raise RunError(f"{what}; {kept}; lower optim.lr or algo.inner_lr, or set train.grad_clip")

    def take(self, iteration: int, metric: str) -> dict:
        """The means since the last line, and start new sums."""
        steps = iteration - self.logged_at
        record = {"train/loss": self.loss.item() / steps, f"train/{metric}": self.metric.item() / steps}
        self.loss.zero_(), self.metric.zero_()
        self.logged_at = iteration
        return record


def validate(parts: Components, eval_task, cfg: DictConfig, group, split: str, episodes: int, weights: dict,
             record=None) -> dict:
    """``evaluate`` on ``episodes`` fixed episodes of ``split`` with ``weights``, in eval mode (``record``: see
    ``evaluate``)."""
    with evaluating(parts.model):
        return evaluate(eval_task, weights, parts.source, split, episodes, cfg.eval, parts.task_parallel,
                        parts.objective.metric_name, group, parts.autocast, record, parts.map_episodes)


def keep_best(state: TrainState, value: float, higher_is_better: bool) -> bool:
    """Whether validation ``value`` at ``state.iteration`` beats the best so far (then it becomes the best); a
    validation whose inner loop diverged (NaN) never beats a finite one."""
    best = state.best
    if best is not None and math.isfinite(best["value"]):
        better = value > best["value"] if higher_is_better else value < best["value"]
        if not (math.isfinite(value) and better):
            return False
    state.best = {"value": value, "iteration": state.iteration}
    return True


def save(path: Path, parts: Components, state: TrainState, cfg: DictConfig, run_dir: Path, group) -> None:
    """Write ``state`` with what rebuilds the network to ``path`` (the main rank only)."""
    if not group.is_main:
        return
    source = parts.source
    data = {"input_shape": list(source.input_shape), "output_dim": source.output_dim, "objective": source.objective,
            "normalisation": source.normalisation, "inverted": source.inverted}
    save_checkpoint(path, Checkpoint(**state.state_dict(), buffers=dict(parts.model.named_buffers()),
                                     task_parallel=parts.task_parallel, data=data,
                                     config=OmegaConf.to_container(cfg, resolve=True)), run_dir=run_dir)


def resume(parts: Components, state: TrainState, checkpoint: Checkpoint, cfg: DictConfig, group) -> None:
    """Continue ``state`` and the network's buffers from ``checkpoint``, with the mapping the run started with."""
    state.load_state_dict(checkpoint.state_dict(), cfg.seed)
    if parts.task_parallel == "auto":
        # a resumed run goes on as it started, not with a re-timed mapping
        use_task_parallel(parts, checkpoint.task_parallel)
    restore_buffers(parts.model, checkpoint)
    if group.is_main:
        print(f"resumed from iteration {checkpoint.iteration} of {cfg.train.iterations}", flush=True)
        planned, scheduler = checkpoint.config["train"]["iterations"], state.scheduler
        now = cfg.optim.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)  # the schedule over the new length
        if planned != cfg.train.iterations and not math.isclose(now, scheduler.get_last_lr()[0]):
            print(f"note: the run was planned for {planned} iterations; its {cfg.optim.schedule} learning-rate "
                  f"schedule now spans {cfg.train.iterations}, so the learning rate goes from "
                  f"{scheduler.get_last_lr()[0]:.3g} to {now:.3g}", flush=True)


def prepare(cfg: DictConfig, group, checkpoint) -> tuple:
    """The run's components and its training state, continued from ``checkpoint`` when resuming (else None)."""
    parts = build_components(cfg)
    if group.is_main:
        print(describe(parts.model, cfg.model), flush=True)
    if checkpoint is None and cfg.train.get("init_from"):
        initialise_from(cfg.train.init_from, parts.model, parts.params, cfg.trust_checkpoint)
    state = TrainState.create(cfg, parts.params, parts.device)
    if checkpoint is not None:
        resume(parts, state, checkpoint, cfg, group)
    if cfg.train.meta_batch_size < group.world:
        raise ValueError(f"train.meta_batch_size={cfg.train.meta_batch_size} leaves some of the {group.world} ranks "
                         f"without tasks; set it to at least {group.world}")
    return parts, state


def task_functions(parts: Components, cfg: DictConfig, clock: Optional[torch.Tensor] = None) -> tuple:
    """(settings, train_task, eval_task): the per-task meta-loss reads the algorithm's settings of the current
    iteration from ``settings`` (an ``Annealed`` with ``clock``); evaluation uses the run's settings."""
    settings = Annealed(parts, clock)
    train_task = parts.per_task(lambda p, *task: parts.algorithm.meta_loss(parts.task_forward(*task), p, *task,
                                                                           settings.current, parts.objective))
    return settings, train_task, parts.per_task(parts.eval_task(cfg.eval.transductive))


def train(cfg: DictConfig, run_dir: Path, group: distributed.Group, started: float, checkpoint) -> float:
    """``run``'s work on one rank of ``group``, from ``checkpoint`` when resuming (else None); only the main rank
    logs and writes files."""
    parts, state = prepare(cfg, group, checkpoint)
    if cfg.hardware.precision == "auto" and group.is_main:
        print(f"hardware.precision=auto: {parts.precision} ({hardware.precision_reason(parts.precision)})", flush=True)
    clock = torch.zeros((), dtype=torch.long, device=parts.device) if parts.graphs else None
    settings, train_task, eval_task = task_functions(parts, cfg, clock)
    # plain objects, read every iteration (and every inner step): an OmegaConf lookup costs about 0.1 ms
    train_cfg, metric = OmegaConf.to_object(cfg.train), parts.objective.metric_name
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    loggers = build_loggers(cfg, run_dir, state.iteration) if group.is_main else []
    progress = Progress(cfg.train.iterations, state.iteration, enabled=cfg.logger.console and group.is_main)
    means = TrainMeans(parts.device, state, train_cfg)
    # the backbone's own parameters (the optimiser updates them in place), when batch norm keeps averages
    backbone = {name: parts.params[name] for name, _ in parts.model.named_parameters()} \
        if has_running_stats(parts.model) else None
    deadline = started + 60 * cfg.train.max_minutes if cfg.train.max_minutes else None
    results = None
    try:
        choose_task_parallel(parts, train_task, cfg, group)
        step = iteration_step(parts, state, settings, train_task, train_cfg, group, parts.graphs)
        with PreemptionGuard() as preemption:
            progress.begin()
            for iteration in range(state.iteration + 1, cfg.train.iterations + 1):
                settings.at(iteration)
                whole, loss, metric_part = step()
                state.scheduler.step()
                state.iteration = iteration
                if backbone is not None:
                    record_statistics(parts, whole, backbone)
                # one all-reduce for both, so every rank sees the same loss and stops at the same iteration
                means.add(group.sum(torch.stack([loss, metric_part])), iteration)
                # a wall-clock budget (train.max_minutes) ends training at the first iteration past it, as the last
                # iteration would; under ddp that is one scalar all-reduce per iteration, so all ranks stop together
                out_of_time = deadline is not None and group.any(time.perf_counter() > deadline)
                last = iteration == train_cfg.iterations or out_of_time
                logs, validates = iteration % train_cfg.log_every == 0 or last, iteration % train_cfg.val_every == 0
                if logs or validates:
                    means.ensure_healthy(last_path)
                    record = {**means.take(iteration, metric), "train/lr": float(state.scheduler.get_last_lr()[0])} \
                        if logs else {}
                    if validates or last:
                        # model selection on the fixed validation episodes; the meta-test uses this checkpoint
                        state.val = validate(parts, eval_task, cfg, group, "val", cfg.eval.val_episodes, parts.params)
                        record.update(state.val)
                        if keep_best(state, state.val[f"val/{metric}"], parts.objective.higher_is_better):
                            save(best_path, parts, state, cfg, run_dir, group)
                    for logger in loggers:
                        logger.log(iteration, record)
                    progress.update(iteration, {k: v for k, v in record.items() if not isinstance(v, list)})
                # a scheduler's stop signal: checkpoint this iteration and stop; resume=true continues from it
                stop = group.any(preemption.requested)
                if iteration % train_cfg.checkpoint_every == 0 or last or stop:
                    means.ensure_healthy(last_path)
                    save(last_path, parts, state, cfg, run_dir, group)
                if stop:
                    raise preemption.stopped(iteration, last_path)
                if last:
                    break
        step = None  # a captured iteration's graph, and its memory, go before the meta-test
        results = meta_test(parts, state, eval_task, cfg, run_dir, group, started)
    finally:
        progress.close()
        for logger in loggers:
            logger.finish(results)
    if group.is_main:
        report(results, cfg, state, metric, run_dir)
    return state.val[f"val/{metric}"]


def iteration_step(parts: Components, state: TrainState, settings: Annealed, train_task, train_cfg, group,
                   graphs: bool):
    """``step() -> (meta-batch, loss, metric)``: an iteration's device work (draw, meta-step), eager or, with
    ``graphs``, replayed from the CUDA graph of the settings' ``shape`` (``metarun.runner.captured``)."""
    def work() -> tuple:
        if graphs:
            settings.on_device()
        # every rank draws the same meta-batch from the same generator and keeps its own tasks
        whole = parts.source.sample(train_cfg.meta_batch_size, state.generator)
        tasks = group.shard(whole)
        return whole, *fitted(lambda: meta_step(parts, state, train_task, tasks, train_cfg.meta_batch_size,
                                                train_cfg.grad_clip, group), parts, tasks.num_tasks)

    if not graphs:
        return work
    captured.device_learning_rates(state.optimizer, parts.device)
    # a capture that runs out of memory under vmap_chunk=auto is tried again later with half the tasks at once
    replays = captured.Replays("the training iteration", parts.hardware.cuda_graphs == "auto", state.generator,
                               smaller=lambda: halved_if_halvable(parts, train_cfg.meta_batch_size))
    return lambda: replays((settings.shape(), parts.vmap_chunk), work)


def choose_task_parallel(parts: Components, train_task, cfg: DictConfig, group) -> None:
    """Resolve ``hardware.task_parallel=auto`` on this run's own meta-step (or its remembered choice)."""
    # the timing batch comes from its own generator, so the training stream is the same whichever mapping wins
    probe = torch.Generator(device=parts.device).manual_seed(cfg.seed + 1)
    memory = remembered.for_run(cfg, "train", parts.device, threads=parts.threads)
    tasks = max(1, len(group.block(cfg.train.meta_batch_size)))  # this rank's share of a meta-batch
    # the job's size from the config, alike on every rank, so that all ranks settle alike whether to time
    choice = tune(parts, train_task, parts.params, lambda n: parts.source.sample(min(n, tasks), probe),
                  cfg.train.iterations * cfg.train.meta_batch_size, group, memory=memory)
    if choice and group.is_main:
        print(remembered.choice_line(parts.task_parallel, choice, memory))


def meta_test(parts: Components, state: TrainState, eval_task, cfg: DictConfig, run_dir: Path, group,
              started: float) -> dict:
    """Score the best checkpoint on fixed, seeded test episodes, independent of the training stream; write
    results.json (the main rank)."""
    metric = parts.objective.metric_name
    group.barrier()  # rank 0 has written best.pt
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt", parts.device, cfg.trust_checkpoint)
    restore_buffers(parts.model, best)
    results = {
        **validate(parts, eval_task, cfg, group, "test", cfg.eval.episodes, best.params,
                   episodes_writer(cfg, metric, run_dir / EPISODES_FILE)),
        **state.val,
        "best/iteration": state.best["iteration"],
        f"best/val_{metric}": state.best["value"],
        "algo": cfg.algo.name,
        "dataset": cfg.dataset.name,
        "hardware/task_parallel": parts.task_parallel,
        "hardware/precision": parts.precision,
        "iterations": state.iteration,
        "test/episodes": cfg.eval.episodes,
        "test/inner_steps": OmegaConf.select(cfg, "algo.test_inner_steps", default=0),
        "seed": cfg.seed,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if group.is_main:
        write_results(run_dir / "results.json", results)
    return results


def report(results: dict, cfg: DictConfig, state: TrainState, metric: str, run_dir: Path) -> None:
    """The run's last lines: the test score and where the run is, and a warning when test episodes diverged."""
    score = metric_text(f"test/{metric}", results[f"test/{metric}"], results[f"test/{metric}_ci95"])
    per_source = source_table(results, "test", metric)
    print(f"{cfg.algo.name} on {cfg.dataset.name}: test/{metric} = {score} ({cfg.eval.episodes} episodes"
          f"{' per source' if per_source else ''}, best iteration {state.best['iteration']}) in {results['wall_s']:.0f}s "
          f"→ {run_dir}")
    if per_source:
        print(per_source)
    if results["test/nonfinite"]:
        print(f"warning: {results['test/nonfinite']} of {cfg.eval.episodes} test episodes diverged in the test-time "
              "inner loop; lower algo.inner_lr or algo.test_inner_steps to see the others' mean")
