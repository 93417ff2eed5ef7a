"""hardware=ddp on the CPU with gloo and 2 processes: the meta-gradient and a run's results equal the single
process's over the same tasks, and only rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from metarun.mapping.task_parallel import map_tasks
from metarun.runner import distributed
from metarun.runner.components import build_components
from metarun.utils.errors import RunError
from tests.conftest import TINY, compose_config, run_cli

# 5 tasks split 3 + 2: unequal shares must still give the mean over all 5
GRADIENT_CONFIG = ["train.meta_batch_size=5", "hardware.num_threads=1"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (standalone: the launcher picks a free port); a rank that
    aborts in C++ prints every thread's Python stack (faulthandler), so a rare crash names where it happened."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def meta_gradient(cfg, group: distributed.Group) -> dict:
    """The initial parameters and the (summed over ranks) meta-gradient of one seeded meta-batch."""
    parts = build_components(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = group.shard(parts.source.sample(cfg.train.meta_batch_size, generator))

    def task(p, *tensors):
        return parts.algorithm.meta_loss(parts.forward, p, *tensors, cfg.algo, parts.objective)

    initial = {name: p.detach().clone() for name, p in parts.params.items()}
    losses, _ = map_tasks(task, parts.params, batch, parts.task_parallel)
    (losses.sum() / cfg.train.meta_batch_size).backward()
    group.reduce_gradients(parts.params)
    return {"params": initial, "grads": {name: p.grad for name, p in parts.params.items()}}


def gradient_worker(rank: int, out_dir: str) -> None:
    """One rank of the gradient test: save this rank's view."""
    cfg = compose_config([*GRADIENT_CONFIG, "hardware=ddp"], output_dir=out_dir)
    group = distributed.setup(cfg.hardware, cfg.paths.output_dir)
    try:
        # a stop signal seen by rank 1 alone must stop rank 0 too
        view = {"stop": group.any(rank == 1), **meta_gradient(cfg, group)}
        torch.save(view, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.close(group)


def run_dir_worker(rank: int, out_dir: str) -> None:
    """One rank of the run-directory test: each rank names its own directory; save the error it raises."""
    cfg = compose_config(["hardware=ddp"], output_dir=os.path.join(out_dir, f"rank{rank}"))
    with pytest.raises(RunError, match="ranks disagree on the run directory .* pass hydra.run.dir=DIR") as err:
        distributed.setup(cfg.hardware, cfg.paths.output_dir)
    with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as file:
        file.write(str(err.value))


def test_ranks_with_different_run_directories_stop_naming_hydra_run_dir(tmp_path):
    # Hydra's default run directory is timestamped, so ranks started a second apart would split the run
    ranks = torchrun("-m", "tests.test_distributed", "run_dir_worker", str(tmp_path))
    assert ranks.returncode == 0, ranks.stderr
    assert all((tmp_path / f"error{rank}.txt").is_file() for rank in range(2))


def test_all_reduced_meta_gradient_equals_the_single_process_one(tmp_path):
    ranks = torchrun("-m", "tests.test_distributed", "gradient_worker", str(tmp_path))
    assert ranks.returncode == 0, ranks.stderr
    single = meta_gradient(compose_config(GRADIENT_CONFIG), distributed.Group())
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for name, grad in single["grads"].items():
        for view in ranks:
            # same seed, same start; same gradients on every rank keep the parameters identical
            assert torch.equal(view["params"][name], single["params"][name])
            torch.testing.assert_close(view["grads"][name], grad, rtol=1e-5, atol=1e-7)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name])
    assert ranks[0]["stop"] and ranks[1]["stop"]


def test_blocks_cover_every_index_once_in_rank_order():
    assert [distributed.Group(rank, 2).block(5) for rank in range(2)] == [range(0, 3), range(3, 5)]
    assert [list(distributed.Group(rank, 3).block(2)) for rank in range(3)] == [[0], [1], []]


def test_ddp_run_matches_the_single_process_run_and_only_rank_0_writes(tmp_path):
    overrides = [*TINY, "train.meta_batch_size=5", "eval.batch_size=4"]
    single = run_cli(*overrides, "hardware=cpu", f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr
    ddp = torchrun("-m", "metarun.runner.cli", *overrides, "hardware=ddp", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("single", "ddp")}
    for key in ("test/mse", "test/mse_ci95", "val/mse", "best/val_mse"):
        assert results["ddp"][key] == pytest.approx(results["single"][key], rel=1e-5), key
    assert results["ddp"]["best/iteration"] == results["single"]["best/iteration"]
    # a second writer would have doubled the metrics lines and the summary line
    metrics = {name: (tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("single", "ddp")}
    assert len(metrics["ddp"]) == len(metrics["single"])
    for ddp_line, single_line in zip(*(map(json.loads, metrics[name]) for name in ("ddp", "single"))):
        assert ddp_line["train/loss"] == pytest.approx(single_line["train/loss"], rel=1e-5)
    assert ddp.stdout.count("test/mse =") == 1


def test_ddp_without_torchrun_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_ENV}
    result = subprocess.run([sys.executable, "-m", "metarun.runner.cli", *TINY, "hardware=ddp",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "torchrun --nproc_per_node=N -m metarun.runner.cli hardware=ddp" in result.stderr


if __name__ == "__main__":
    # one rank of a test above, launched by torchrun: python -m tests.test_distributed WORKER OUT_DIR
    globals()[sys.argv[1]](int(os.environ["RANK"]), sys.argv[2])
