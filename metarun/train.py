"""The outer loop, top to bottom: sample → meta-step → clip → optimiser step → log → validate → checkpoint,
then meta-test on fixed episodes and write results.json."""

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metarun import hardware
from metarun.algos import get_algorithm
from metarun.checkpoint import save_checkpoint
from metarun.config import check
from metarun.data import build_tasks
from metarun.engine import functional_forward, map_tasks
from metarun.errors import RunError
from metarun.evaluate import evaluate
from metarun.logging.console import Progress
from metarun.logging import build_loggers
from metarun.logging.results import write_results
from metarun.models import build_model
from metarun.objectives import OBJECTIVES


def run(cfg: DictConfig) -> float:
    """Meta-train and meta-test one configuration in ``paths.output_dir``; return the last validation metric."""
    check(cfg)
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    device = hardware.configure(cfg.hardware, cfg.seed)
    mode = hardware.task_parallel_mode(cfg.hardware)
    source = build_tasks(cfg.dataset, device)
    objective = OBJECTIVES[source.objective]
    algorithm = get_algorithm(cfg.algo.name)
    model = build_model(cfg.model, source.input_shape, source.output_dim).to(device)
    forward = functional_forward(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam(params.values(), lr=cfg.optim.lr)
    # the training stream has its own generator, so evaluation episodes never shift it
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)

    def train_task(p, *task):
        return algorithm.meta_loss(forward, p, *task, cfg.algo, objective)

    def eval_task(p, *task):
        return algorithm.evaluate_task(forward, p, *task, cfg.algo, objective)

    def validate(split: str, episodes: int) -> dict:
        return evaluate(eval_task, params, source, split, episodes, cfg.eval, mode, objective.metric_name)

    def save(iteration: int) -> None:
        save_checkpoint(checkpoint_path, {
            "iteration": iteration,
            "params": {name: p.detach() for name, p in params.items()},
            "buffers": dict(model.named_buffers()),
            "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
            "config": OmegaConf.to_container(cfg, resolve=True),
        })

    def ensure_finite() -> None:
        # tracked on the device so the hot loop never waits on a host sync
        if first_nonfinite.item() >= 0:
            kept = f"the last good checkpoint is {checkpoint_path}" if checkpoint_path.exists() else "no checkpoint was written"
            raise RunError(f"non-finite train loss at iteration {first_nonfinite.item()}; {kept}; "
                           "lower optim.lr or algo.inner_lr, or set train.grad_clip")

    iterations, metric = cfg.train.iterations, objective.metric_name
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    loggers = build_loggers(cfg, run_dir)
    progress = Progress(iterations, enabled=cfg.logger.console)
    first_nonfinite = torch.tensor(-1, device=device)
    loss_sum, metric_sum, logged_at = torch.zeros((), device=device), torch.zeros((), device=device), 0
    val_results, results = {}, None
    try:
        for iteration in range(1, iterations + 1):
            batch = source.sample(cfg.train.meta_batch_size, generator)
            losses, task_metrics = map_tasks(train_task, params, batch, mode)
            loss = losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(params.values(), cfg.train.grad_clip)
            optimizer.step()

            bad = ~torch.isfinite(loss.detach()) & (first_nonfinite < 0)
            first_nonfinite = torch.where(bad, iteration, first_nonfinite)
            loss_sum += loss.detach()
            metric_sum += task_metrics.detach().mean()
            last = iteration == iterations
            if iteration % cfg.train.log_every == 0 or last:
                ensure_finite()
                steps = iteration - logged_at
                record = {"train/loss": loss_sum.item() / steps, f"train/{metric}": metric_sum.item() / steps}
                loss_sum.zero_(), metric_sum.zero_()
                logged_at = iteration
                if iteration % cfg.train.val_every == 0 or last:
                    val_results = validate("val", cfg.eval.val_episodes)
                    record.update(val_results)
                for logger in loggers:
                    logger.log(iteration, record)
                progress.update(iteration, {k: v for k, v in record.items() if not isinstance(v, list)})
            if iteration % cfg.train.checkpoint_every == 0 or last:
                ensure_finite()
                save(iteration)

        # fixed, seeded test episodes, independent of the training stream
        results = {
            **validate("test", cfg.eval.episodes),
            **val_results,
            "algo": cfg.algo.name,
            "dataset": cfg.dataset.name,
            "iterations": iterations,
            "test/episodes": cfg.eval.episodes,
            "test/inner_steps": cfg.algo.test_inner_steps,
            "seed": cfg.seed,
            "wall_s": round(time.perf_counter() - started, 3),
        }
        write_results(run_dir / "results.json", results)
    finally:
        progress.close()
        for logger in loggers:
            logger.finish(results)
    print(f"{cfg.algo.name} on {cfg.dataset.name}: test/{metric} = {results[f'test/{metric}']:.4f} "
          f"± {results[f'test/{metric}_ci95']:.4f} ({cfg.eval.episodes} episodes) in {results['wall_s']:.0f}s → {run_dir}")
    if results["test/nonfinite"]:
        print(f"warning: {results['test/nonfinite']} of {cfg.eval.episodes} test episodes diverged in the test-time "
              "inner loop; lower algo.inner_lr or algo.test_inner_steps to see the others' mean")
    return val_results[f"val/{metric}"]
