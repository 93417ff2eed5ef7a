"""The training loop in-process: the run-directory contract, seeding, and stopping on a non-finite loss."""

import json

import pytest
import torch

from metarun.algos import maml
from metarun.errors import RunError
from metarun.train import run
from tests.conftest import compose_config


def test_run_directory_contract(tmp_path, small_budget):
    value = run(compose_config(small_budget, output_dir=tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [20, 40, 60]
    assert all("train/loss" in line for line in lines) and "val/mse" in lines[-1] and "val/mse" not in lines[0]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["val/mse"] == value == lines[-1]["val/mse"]
    assert (results["algo"], results["dataset"], results["iterations"], results["seed"]) == ("maml", "sinusoid", 60, 0)
    assert len(results["test/mse_by_step"]) == 11 and results["test/mse"] == results["test/mse_by_step"][-1]
    assert results["test/mse_ci95"] > 0 and results["wall_s"] > 0 and results["test/nonfinite"] == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["iteration"] == 60 and checkpoint["config"]["train"]["iterations"] == 60
    assert set(checkpoint["params"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    assert {"torch", "generator"} <= set(checkpoint["rng"]) and checkpoint["optimizer"]["state"]


def test_same_seed_same_results_other_seed_other_results(tmp_path, small_budget):
    results = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run(compose_config([*small_budget, f"seed={seed}"], output_dir=tmp_path / name))
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert results["a"]["test/mse"] == results["b"]["test/mse"]
    assert results["a"]["test/mse"] != results["c"]["test/mse"]


def test_loop_and_vmap_runs_agree(tmp_path, small_budget):
    values = [run(compose_config([*small_budget, f"hardware.task_parallel={mode}"], output_dir=tmp_path / mode))
              for mode in ("loop", "vmap")]
    assert values[0] == pytest.approx(values[1], rel=1e-4)


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path, small_budget, monkeypatch):
    calls = {"n": 0}
    real_meta_loss = maml.meta_loss

    def poisoned(*args):
        calls["n"] += 1
        loss, metric = real_meta_loss(*args)
        return (loss * float("nan"), metric) if calls["n"] > 45 else (loss, metric)

    monkeypatch.setattr(maml, "meta_loss", poisoned)
    cfg = compose_config([*small_budget, "hardware.task_parallel=vmap"], output_dir=tmp_path)
    with pytest.raises(RunError, match=r"non-finite train loss at iteration 46; the last good checkpoint is .*last\.pt"):
        run(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["iteration"] == 30
    assert all(torch.isfinite(p).all() for p in checkpoint["params"].values())
    assert not (tmp_path / "results.json").exists()
