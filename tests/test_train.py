"""The training loop in-process: the run-directory contract, seeding, and stopping on a non-finite loss."""

import json
import math
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from metarun.algos import maml
from metarun.mapping import task_parallel
from metarun.runner import train
from metarun.runner.train import run
from metarun.utils.errors import RunError
from tests.conftest import TINY, compose_config, run_cli


def test_run_directory_contract(tmp_path, small_budget):
    value = run(compose_config(small_budget, output_dir=tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # train.log_every=20, train.val_every=30: a line at each, validation on its own steps too
    assert [line["step"] for line in lines] == [20, 30, 40, 60]
    assert [line["step"] for line in lines if "train/loss" in line] == [20, 40, 60]
    assert [line["step"] for line in lines if "val/mse" in line and "val/mse_ci95" in line] == [30, 60]
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
    values = [run(compose_config([*small_budget, f"hardware.task_parallel={mapping}"], output_dir=tmp_path / mapping))
              for mapping in ("loop", "vmap")]
    assert values[0] == pytest.approx(values[1], rel=1e-4)


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path, small_budget, monkeypatch):
    calls = {"n": 0}
    real_meta_loss = maml.meta_loss

    def poisoned(*args):
        calls["n"] += 1
        loss, metric = real_meta_loss(*args)
        return (loss * float("nan"), metric) if calls["n"] > 45 else (loss, metric)

    monkeypatch.setattr(maml, "ALGORITHM", replace(maml.ALGORITHM, meta_loss=poisoned))
    cfg = compose_config([*small_budget, "hardware.task_parallel=vmap"], output_dir=tmp_path)
    with pytest.raises(RunError, match=r"non-finite train loss at iteration 46; the last good checkpoint is .*last\.pt"):
        run(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["iteration"] == 30
    assert all(torch.isfinite(p).all() for p in checkpoint["params"].values())
    assert not (tmp_path / "results.json").exists()


def poison_maml_after(monkeypatch, calls: int, factor: float) -> None:
    """Multiply MAML's task losses by ``factor`` from meta-loss call ``calls`` + 1 on: a run that diverges."""
    count = {"n": 0}
    real_meta_loss = maml.meta_loss  # the module's function: unchanged by an earlier patch of ALGORITHM

    def diverging(*args):
        count["n"] += 1
        loss, metric = real_meta_loss(*args)
        return (loss * factor, metric) if count["n"] > calls else (loss, metric)

    monkeypatch.setattr(maml, "ALGORITHM", replace(maml.ALGORITHM, meta_loss=diverging))


def test_a_diverging_loss_stops_like_a_non_finite_one_naming_the_iteration(tmp_path, small_budget, monkeypatch):
    # meta-batch 4 under the loop: 4 calls an iteration, so iteration 41 is the first whose loss is 10^5 times larger
    poison_maml_after(monkeypatch, 160, 1e5)
    cfg = compose_config([*small_budget, "hardware.task_parallel=loop"], output_dir=tmp_path)
    with pytest.raises(RunError, match=r"^train loss \S+ at iteration 41, past train.diverge_factor=1000 times the first "
                                       r"iteration's \S+ \(diverging\); the last good checkpoint is .*last\.pt; lower"):
        run(cfg)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 30
    assert not (tmp_path / "results.json").exists()


def test_train_max_loss_bounds_the_loss_and_a_null_factor_lets_it_grow(tmp_path, small_budget, monkeypatch):
    budget = [*small_budget, "hardware.task_parallel=loop", "train.diverge_factor=null"]
    poison_maml_after(monkeypatch, 160, 1e5)
    run(compose_config(budget, output_dir=tmp_path / "unbounded"))  # grows 10^5 times and finishes
    poison_maml_after(monkeypatch, 160, 1e5)
    with pytest.raises(RunError, match=r"^train loss \S+ at iteration 41, past train.max_loss=1000 \(diverging\)"):
        run(compose_config([*budget, "train.max_loss=1000"], output_dir=tmp_path / "bounded"))


def test_results_are_strict_json_with_null_for_what_diverged_and_a_status(tmp_path, small_budget):
    run(compose_config(small_budget, output_dir=tmp_path / "train"))
    # a test-time inner rate that makes every episode's inner loop blow up: the meta-test's figures are not finite
    done = run_cli("mode=eval", f"checkpoint={tmp_path}/train/checkpoints/best.pt", "algo.inner_lr=1e20",
                   "eval.episodes=10", "hardware.num_threads=1", f"hydra.run.dir={tmp_path}/eval")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "eval" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
    assert results["test/mse"] is None and results["test/nonfinite"] == 10 and None in results["test/mse_by_step"]
    assert results["status"] == "nonfinite" and {"test/mse", "test/mse_by_step"} <= set(results["nonfinite_keys"])
    trained = json.loads((tmp_path / "train" / "results.json").read_text())
    assert trained["status"] == "ok" and "nonfinite_keys" not in trained


@pytest.mark.parametrize("faster", ["vmap", "loop"])
def test_auto_runs_exactly_as_the_mapping_it_times_faster(faster, tmp_path, monkeypatch, capsys):
    budget = [*TINY, "algo.test_inner_steps=2"]
    run(compose_config([*budget, f"hardware.task_parallel={faster}"], output_dir=tmp_path / "set"))
    slower = {"vmap": "loop", "loop": "vmap"}[faster]
    real_race = task_parallel.race

    def race(*args, **kwargs):
        real_race(*args, **kwargs)  # the real timing steps run; only their verdict is fixed
        return {faster: 0.001, slower: 0.002}, True

    monkeypatch.setattr("metarun.mapping.task_parallel.race", race)
    monkeypatch.setattr("metarun.logging.console.LINE_EVERY_S", 0.0)  # every step of a long phase gets its line
    capsys.readouterr()
    run(compose_config([*budget, "logger.console=true"], output_dir=tmp_path / "auto"))
    out, err = capsys.readouterr()
    assert f"hardware.task_parallel=auto: {faster} (a step of a few tasks: " in out
    assert re.search(r"^model: mlp \(hidden=\[40,40\]\), 1,761 parameters$", out, re.M), out  # 2x40 + 41x40 + 41
    # the phases that can take minutes say so in a log: timing the mappings, then each evaluation's batches
    assert re.search(r"\[timing hardware.task_parallel=auto \((vmap|loop|threads)(, \w+)+\)\] 1/\d+ elapsed", err), err
    assert "[val (10 episodes)] 1/1 " in err and "[test (10 episodes)] 1/1 " in err
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("set", "auto")}
    assert results["auto"]["hardware/task_parallel"] == results["set"]["hardware/task_parallel"] == faster
    # timing the mappings draws from no stream the run uses: the run is the set mapping's, to the bit
    for key in ("test/mse", "val/mse", "test/mse_by_step", "best/iteration"):
        assert results["auto"][key] == results["set"][key], key


def test_bf16_autocast_on_the_cpu_trains_and_stays_finite(tmp_path):
    run(compose_config([*TINY, "hardware.precision=bf16"], output_dir=tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test/nonfinite"] == 0 and math.isfinite(results["test/mse"])


def test_fp16_on_the_cpu_is_a_one_line_error(tmp_path):
    with pytest.raises(RunError, match=r"^hardware.precision=fp16 needs a CUDA device; use bf16 or fp32$"):
        run(compose_config([*TINY, "hardware.device=cpu", "hardware.precision=fp16"], output_dir=tmp_path))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_trains_and_saves_the_scaler(tmp_path, precision):
    run(compose_config([*TINY, "hardware.device=cuda", f"hardware.precision={precision}"], output_dir=tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test/nonfinite"] == 0
    scaler = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # the state of an enabled scaler (its scale), else empty


def test_time_budget_stops_at_the_first_iteration_past_it_and_logs_validates_and_checkpoints(tmp_path, small_budget,
                                                                                               monkeypatch):
    done = {"iterations": 0}
    meta_backward = train.meta_backward

    def counted(*args, **kwargs):
        done["iterations"] += 1
        return meta_backward(*args, **kwargs)

    # a clock on which each iteration takes 10 s: a 1-minute budget runs out in iteration 7, long before a log step
    monkeypatch.setattr(train, "meta_backward", counted)
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: 10.0 * done["iterations"]))
    run(compose_config([*small_budget, "train.iterations=100", "train.log_every=50", "train.val_every=50",
                        "train.checkpoint_every=50", "train.max_minutes=1", "hardware.task_parallel=vmap",
                        "hardware.num_threads=1"],
                       output_dir=tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert results["iterations"] == 7 and results["best/iteration"] == 7
    assert [line["step"] for line in lines] == [7] and "val/mse" in lines[0]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 7


def test_a_run_resumed_without_a_first_loss_is_bounded_by_max_loss_alone(tmp_path):
    # a checkpoint from before train.diverge_factor: no yardstick, so a large loss passes the factor but not max_loss
    state = SimpleNamespace(iteration=40, first_loss=None)
    means = train.TrainMeans(torch.device("cpu"), state, SimpleNamespace(diverge_factor=1000.0, max_loss=50.0))
    means.add(torch.tensor([20.0, 0.5]), 41)
    means.ensure_healthy(tmp_path / "last.pt")
    means.add(torch.tensor([60.0, 0.5]), 42)
    with pytest.raises(RunError, match=r"^train loss 60 at iteration 42, past train.max_loss=50 \(diverging\); no "
                                       r"checkpoint was written"):
        means.ensure_healthy(tmp_path / "last.pt")
    assert state.first_loss is None
