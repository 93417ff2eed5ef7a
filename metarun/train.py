"""The outer loop, top to bottom: sample → meta-step → clip → optimiser step → schedule → log → validate (keep
the best) → checkpoint, then meta-test the best checkpoint on fixed episodes and write results.json."""

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metarun import distributed, hardware, mode_memory
from metarun.checkpoint import load_checkpoint, restore_buffers, save_checkpoint
from metarun.config import check
from metarun.engine import meta_backward, setup, tune
from metarun.errors import RunError
from metarun.evaluate import evaluate
from metarun.logging import build_loggers, trackers
from metarun.logging.console import Progress, show_progress
from metarun.logging.results import write_results
from metarun.logging.table import metric_text
from metarun.models.batchnorm import evaluating, has_running_stats, recording
from metarun.preemption import PreemptionGuard
from metarun.run_dir import RunDirectory

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
RUN_IDENTITY = ("algo", "dataset", "model", "train", "optim", "seed")
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
    trackers(cfg.logger)  # a logger without its package stops the run before the data is loaded
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
            return train(cfg, run_dir, group, started, state)
    finally:
        distributed.close(group)


def resume_state(cfg: DictConfig, checkpoints: Path):
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
    state = readable_checkpoint(last, checkpoints / "best.pt")
    # a resumed run must be the same run: anything that shapes training has to match the checkpoint's config
    current = OmegaConf.to_container(cfg, resolve=True)
    changed = [key for key in RUN_IDENTITY if state["config"][key] != current[key]]
    if changed:
        raise ValueError(f"resume={str(cfg.resume).lower()} but {', '.join(changed)} differ from the config in {last}; "
                         "resume with the original overrides (see .hydra/overrides.yaml in the run directory), "
                         "or start over in a new run directory")
    return state


def readable_checkpoint(last: Path, best: Path) -> dict:
    """``last``'s state, or ``best``'s when ``last`` cannot be read (both are full training states)."""
    try:
        return load_checkpoint(last)
    except RunError as err:
        try:
            state = load_checkpoint(best)
        except (RunError, FileNotFoundError):
            raise RunError(f"{last} is unreadable (truncated or corrupt) and no readable best.pt is kept beside it; "
                           "start over with resume=false or in a new hydra.run.dir") from err
    print(f"warning: {last} is unreadable (truncated or corrupt); resuming from {best} (iteration "
          f"{state['iteration']}), the newest good checkpoint kept")
    return state


def train(cfg: DictConfig, run_dir: Path, group: distributed.Group, started: float, state) -> float:
    """``run``'s work on one rank of ``group``, from the checkpoint ``state`` when resuming (else None); only the
    main rank logs and writes files."""
    parts = setup(cfg)
    source, objective, algorithm, params, device = parts.source, parts.objective, parts.algorithm, parts.params, parts.device
    iterations, metric = cfg.train.iterations, parts.objective.metric_name
    optimizer, scheduler = build_optimizer(cfg.optim, params, iterations)
    scaler = hardware.grad_scaler(cfg.hardware, device)
    # the training stream has its own generator, so evaluation episodes never shift it
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    # plain objects, read every iteration (and every inner step): an OmegaConf lookup costs about 0.1 ms
    algo_cfg, train_cfg = OmegaConf.to_object(cfg.algo), OmegaConf.to_object(cfg.train)
    settings = algo_cfg  # replaced each iteration when the algorithm anneals something (at_iteration)

    def meta_loss(p, *task):
        return algorithm.meta_loss(parts.forward, p, *task, settings, objective)

    train_task = parts.per_task(meta_loss)
    eval_task = parts.per_task(parts.eval_task(algo_cfg, cfg.eval.transductive))

    def validate(split: str, episodes: int, weights: dict) -> dict:
        with evaluating(parts.model):
            return evaluate(eval_task, weights, source, split, episodes, cfg.eval, parts.mode, metric, group,
                            parts.autocast)

    def record_statistics(batch, backbone: dict) -> None:
        # model.norm=running: batch norm's averages follow the meta-parameters on the whole meta-batch (the
        # same on every rank), outside the differentiated step
        with torch.no_grad(), recording(parts.model):
            parts.forward(backbone, torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1))

    def save(path: Path, iteration: int) -> None:
        if not group.is_main:
            return
        save_checkpoint(path, run_dir=run_dir, state={
            "iteration": iteration,
            "params": {name: p.detach() for name, p in params.items()},
            "buffers": dict(parts.model.named_buffers()),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "task_parallel": parts.mode,
            "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(), "device": device.type,
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
            "best": best, "val": val_results,
            # enough to rebuild the network without the dataset (metarun.load_learner)
            "data": {"input_shape": list(source.input_shape), "output_dim": source.output_dim, "objective": source.objective,
                     "normalisation": getattr(source, "normalisation", None)},
            "config": OmegaConf.to_container(cfg, resolve=True),
        })

    def ensure_finite() -> None:
        # tracked on the device so the hot loop never waits on a host sync
        if first_nonfinite.item() >= 0:
            kept = f"the last good checkpoint is {last_path}" if last_path.exists() else "no checkpoint was written"
            raise RunError(f"non-finite train loss at iteration {first_nonfinite.item()}; {kept}; "
                           "lower optim.lr or algo.inner_lr, or set train.grad_clip")

    start, best, val_results, results = 1, None, {}, None
    if state is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler", {}))  # checkpoints from before loss scaling have none
        if parts.mode == "auto":
            # a resumed run goes on as it started, not with a re-timed mode
            parts.use_mode(state.get("task_parallel", "auto"))
        torch.set_rng_state(state["rng"]["torch"])
        saved_on = state["rng"].get("device", device.type)  # checkpoints from before the key: this device
        if saved_on == device.type:
            generator.set_state(state["rng"]["generator"])
            if state["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        else:
            # a CUDA generator's state does not load into a CPU one, nor the reverse: a stream seeded from the
            # seed and the iteration keeps the resumed run reproducible, though no longer the uninterrupted one
            generator.manual_seed(cfg.seed + state["iteration"])
            print(f"resumed on {device.type} from a checkpoint written on {saved_on}: the training stream is "
                  f"reseeded, so from iteration {state['iteration'] + 1} the run differs from one that stayed there")
        restore_buffers(parts.model, state)
        start, best, val_results = state["iteration"] + 1, state["best"], state["val"]
        if group.is_main:
            print(f"resumed from iteration {state['iteration']} of {iterations}", flush=True)

    if cfg.train.meta_batch_size < group.world:
        raise ValueError(f"train.meta_batch_size={cfg.train.meta_batch_size} leaves some of the {group.world} ranks "
                         f"without tasks; set it to at least {group.world}")
    loggers = build_loggers(cfg, run_dir, start - 1) if group.is_main else []
    progress = Progress(iterations, start - 1, enabled=cfg.logger.console and group.is_main)
    first_nonfinite = torch.tensor(-1, device=device)
    loss_sum, metric_sum, logged_at = torch.zeros((), device=device), torch.zeros((), device=device), start - 1
    better = (lambda a, b: a > b) if objective.higher_is_better else (lambda a, b: a < b)
    # the backbone's own parameters (the optimiser updates them in place), when batch norm keeps averages
    backbone = None
    if has_running_stats(parts.model):
        backbone = {name: params[name] for name, _ in parts.model.named_parameters()}
    iteration = start - 1  # a resumed run that had finished trains no further
    deadline = started + 60 * cfg.train.max_minutes if cfg.train.max_minutes else None
    try:
        # the timing batch comes from its own generator, so the training stream is the same whichever mode wins
        probe = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        memory = mode_memory.for_run(cfg, "train", device, meta_batch=cfg.train.meta_batch_size, threads=parts.threads)
        seconds = tune(parts, train_task, params,
                       lambda: group.shard(source.sample(cfg.train.meta_batch_size, probe)), group, memory=memory)
        if seconds and group.is_main:
            print(mode_memory.choice_line(parts.mode, seconds, memory))
        with PreemptionGuard() as preemption:
            progress.begin()
            for iteration in range(start, iterations + 1):
                if hasattr(algorithm, "at_iteration"):
                    settings = algorithm.at_iteration(algo_cfg, iteration)
                # every rank draws the same meta-batch from the same generator and keeps its own tasks
                whole = source.sample(train_cfg.meta_batch_size, generator)
                batch = group.shard(whole)
                optimizer.zero_grad(set_to_none=True)
                # divided by the whole meta-batch, so summing over ranks gives the mean over all tasks
                losses, task_metrics = meta_backward(
                    train_task, params, batch, parts.mode,
                    lambda task_loss: scaler.scale(task_loss / train_cfg.meta_batch_size), parts.autocast)
                loss = losses.sum() / train_cfg.meta_batch_size
                group.reduce_gradients(params)
                scaler.unscale_(optimizer)  # clip the true gradients (fp16 scales them; otherwise a no-op)
                if train_cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params.values(), train_cfg.grad_clip)
                scaler.step(optimizer)  # fp16: skipped when the scaled gradients overflowed
                scaler.update()
                scheduler.step()
                if backbone is not None:
                    record_statistics(whole, backbone)

                # one all-reduce for both, so every rank sees the same loss and stops at the same iteration
                metric_part = task_metrics.sum() / train_cfg.meta_batch_size
                totals = group.sum(torch.stack([loss, metric_part]))
                bad = ~torch.isfinite(totals[0]) & (first_nonfinite < 0)
                first_nonfinite = torch.where(bad, iteration, first_nonfinite)
                loss_sum += totals[0]
                metric_sum += totals[1]
                # a wall-clock budget (train.max_minutes) ends training at the first iteration past it, as the last
                # iteration would; under ddp that is one scalar all-reduce per iteration, so all ranks stop together
                out_of_time = deadline is not None and group.any(time.perf_counter() > deadline)
                last = iteration == iterations or out_of_time
                if iteration % train_cfg.log_every == 0 or last:
                    ensure_finite()
                    steps = iteration - logged_at
                    record = {"train/loss": loss_sum.item() / steps, f"train/{metric}": metric_sum.item() / steps,
                              "train/lr": scheduler.get_last_lr()[0]}
                    loss_sum.zero_(), metric_sum.zero_()
                    logged_at = iteration
                    if iteration % train_cfg.val_every == 0 or last:
                        val_results = validate("val", cfg.eval.val_episodes, params)
                        record.update(val_results)
                        # model selection on the fixed validation episodes; the meta-test uses this checkpoint
                        value = val_results[f"val/{metric}"]
                        # a validation whose inner loop diverged (NaN) never beats a finite one
                        improved = best is None or not math.isfinite(best["value"]) or (
                            math.isfinite(value) and better(value, best["value"]))
                        if improved:
                            best = {"value": value, "iteration": iteration}
                            save(best_path, iteration)
                    for logger in loggers:
                        logger.log(iteration, record)
                    progress.update(iteration, {k: v for k, v in record.items() if not isinstance(v, list)})
                if iteration % train_cfg.checkpoint_every == 0 or last:
                    ensure_finite()
                    save(last_path, iteration)
                # a scheduler's stop signal: checkpoint this iteration and stop; resume=true continues from it
                if group.any(preemption.requested):
                    ensure_finite()
                    save(last_path, iteration)
                    raise preemption.stopped(iteration, last_path)
                if last:
                    break

        # fixed, seeded test episodes, independent of the training stream, scored with the best validation weights
        group.barrier()  # rank 0 has written best.pt
        best_state = load_checkpoint(best_path, device)
        restore_buffers(parts.model, best_state)
        results = {
            **validate("test", cfg.eval.episodes, best_state["params"]),
            **val_results,
            "best/iteration": best["iteration"],
            f"best/val_{metric}": best["value"],
            "algo": cfg.algo.name,
            "dataset": cfg.dataset.name,
            "hardware/task_parallel": parts.mode,
            "iterations": iteration,
            "test/episodes": cfg.eval.episodes,
            "test/inner_steps": OmegaConf.select(cfg, "algo.test_inner_steps", default=0),
            "seed": cfg.seed,
            "wall_s": round(time.perf_counter() - started, 3),
        }
        if group.is_main:
            write_results(run_dir / "results.json", results)
    finally:
        progress.close()
        for logger in loggers:
            logger.finish(results)
    if not group.is_main:
        return val_results[f"val/{metric}"]
    score = metric_text(f"test/{metric}", results[f"test/{metric}"], results[f"test/{metric}_ci95"])
    print(f"{cfg.algo.name} on {cfg.dataset.name}: test/{metric} = {score} ({cfg.eval.episodes} episodes, best iteration "
          f"{best['iteration']}) in {results['wall_s']:.0f}s → {run_dir}")
    if results["test/nonfinite"]:
        print(f"warning: {results['test/nonfinite']} of {cfg.eval.episodes} test episodes diverged in the test-time "
              "inner loop; lower algo.inner_lr or algo.test_inner_steps to see the others' mean")
    return val_results[f"val/{metric}"]
