"""Evaluation protocol and checkpoints: atomic round trip, best-validation selection, resume, mode=eval."""

import json
import math
import os
import signal

import pytest
import torch
from omegaconf import OmegaConf

from metarun.mapping import task_parallel
from metarun.runner import train
from metarun.runner.checkpoint import load_checkpoint, save_checkpoint
from metarun.runner.evaluate import checkpoint_config, evaluate_checkpoint
from metarun.runner.preemption import Preempted
from metarun.runner.train import run
from tests.conftest import TINY, compose_config, run_cli, tiny_checkpoint
from tests.test_checkpoint_format import V1


@pytest.fixture
def small_budget(small_budget):
    """The shared small budget on one thread (a shared CPU makes spinning OpenMP threads expensive)."""
    return [*small_budget, "hardware.num_threads=1"]


def test_checkpoint_round_trip_leaves_no_temporary_file(tmp_path):
    state = tiny_checkpoint()
    save_checkpoint(tmp_path / "c" / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "c" / "last.pt")
    torch.testing.assert_close(loaded.params["w"], state.params["w"])
    assert loaded.iteration == 7 and [p.name for p in (tmp_path / "c").iterdir()] == ["last.pt"]
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_best_checkpoint_is_the_best_validation_and_the_test_uses_it(tmp_path, small_budget):
    budget = [*small_budget, "train.val_every=20", "optim.lr=0.01"]
    run(compose_config(budget, output_dir=tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validations = {line["step"]: line["val/mse"] for line in lines if "val/mse" in line}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["iteration"] == min(validations, key=validations.get)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["best/iteration"] == best["iteration"] and results["best/val_mse"] == min(validations.values())
    # re-evaluating best.pt on the same test episodes reproduces the run's test figure
    cfg = compose_config([*budget, f"checkpoint={tmp_path}/checkpoints/best.pt", "mode=eval"], output_dir=tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    again = evaluate_checkpoint(cfg, [])
    assert again["test/mse"] == pytest.approx(results["test/mse"], rel=1e-6)
    # without batch norm, inductive scoring (each query with the support set) gives the same figure
    cfg.eval.transductive = False
    inductive = evaluate_checkpoint(cfg, ["eval.transductive=false"])
    assert inductive["test/mse"] == pytest.approx(results["test/mse"], rel=1e-5)


@pytest.mark.parametrize("stop, checkpointed", [("kill", 20), ("preemption", 25)])
def test_resumed_run_gives_the_same_final_metrics(tmp_path, small_budget, monkeypatch, capsys, stop, checkpointed):
    # MAML++ with a cosine schedule: optimiser, scheduler, annealing and RNG state must all come back
    budget = [*small_budget, "algo=mamlpp", "algo.inner_steps=2", "algo.test_inner_steps=2", "algo.msl_iterations=40",
              "algo.first_order_iterations=20", "train.iterations=40", "train.checkpoint_every=10",
              "optim.schedule=cosine", "eval.episodes=20"]
    run(compose_config(budget, output_dir=tmp_path / "whole"))

    calls = {"n": 0}
    real_meta_backward = task_parallel.meta_backward

    def interrupted(task_fn, *args):
        calls["n"] += 1
        if calls["n"] == 25:  # mid-way between checkpoints
            if stop == "kill":  # dies at once: last.pt is the one of iteration 20
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGUSR1)  # a scheduler's signal: the loop checkpoints iteration 25
        return real_meta_backward(task_fn, *args)

    monkeypatch.setattr("metarun.runner.train.meta_backward", interrupted)
    with pytest.raises(KeyboardInterrupt if stop == "kill" else Preempted):
        run(compose_config(budget, output_dir=tmp_path / "cut"))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt").iteration == checkpointed
    # a requeued job reruns the same command in the same directory: resume=auto (the default) continues it
    capsys.readouterr()
    run(compose_config([*budget, "resume=true"] if stop == "kill" else budget, output_dir=tmp_path / "cut"))
    assert f"resumed from iteration {checkpointed} of 40\n" in capsys.readouterr().out
    whole, cut = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    for key in ("test/mse", "val/mse", "best/iteration", "test/mse_by_step"):
        assert whole[key] == cut[key], key


def test_a_checkpoint_from_another_device_resumes_with_a_reseeded_stream(tmp_path, small_budget, monkeypatch,
                                                                         capsys):
    # a GPU's checkpoint on a CPU machine: its CUDA generator state (16 bytes) cannot load into a CPU generator
    budget = [*small_budget, "train.iterations=40", "train.checkpoint_every=20"]
    real_meta_backward, calls = task_parallel.meta_backward, []

    def killed_at_25(*args):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return real_meta_backward(*args)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr("metarun.runner.train.meta_backward", killed_at_25)
        run(compose_config(budget, output_dir=tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["rng"].update(device="cuda", generator=torch.zeros(16, dtype=torch.uint8), cuda=[torch.zeros(16)])
    torch.save(state, last)
    run(compose_config([*budget, "resume=true"], output_dir=tmp_path))
    assert "resumed on cpu from a checkpoint written on cuda: the training stream is reseeded" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["iterations"] == 40 and math.isfinite(results["test/mse"])
    assert load_checkpoint(last).rng["device"] == "cpu"


def test_resume_needs_the_checkpoint_and_the_same_config(tmp_path, small_budget):
    with pytest.raises(FileNotFoundError, match="resume=true but .*last.pt does not exist"):
        run(compose_config([*small_budget, "resume=true"], output_dir=tmp_path))
    run(compose_config([*small_budget, "train.iterations=20"], output_dir=tmp_path))
    with pytest.raises(ValueError, match=r"resume=true but algo.inner_lr \(0.01 in the checkpoint, 0.02 now\), seed "
                                         r"\(0 in the checkpoint, 1 now\) differ from the run in .*last.pt; only "
                                         r"train.iterations, .* may change"):
        run(compose_config([*small_budget, "train.iterations=20", "algo.inner_lr=0.02", "seed=1", "resume=true"],
                           output_dir=tmp_path))
    # the default (auto) continues only the same run, and says so when the directory holds another one
    with pytest.raises(ValueError, match=r"resume=auto but seed \(0 in the checkpoint, 1 now\) differ"):
        run(compose_config([*small_budget, "train.iterations=20", "seed=1"], output_dir=tmp_path))
    fresh = run(compose_config([*small_budget, "train.iterations=20", "seed=1", "resume=false"], output_dir=tmp_path))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").config["seed"] == 1 and fresh is not None


def test_a_resume_with_more_iterations_trains_on_and_other_changes_name_old_and_new(tmp_path, small_budget, capsys):
    budget = [*small_budget, "optim.schedule=cosine"]
    run(compose_config([*budget, "train.iterations=40"], output_dir=tmp_path))
    run(compose_config([*budget, "train.iterations=60"], output_dir=tmp_path))
    out = capsys.readouterr().out
    assert "resumed from iteration 40 of 60" in out and "its cosine learning-rate schedule now spans 60" in out
    results = json.loads((tmp_path / "results.json").read_text())
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert results["iterations"] == 60 and steps == [20, 30, 40, 60]  # logged every 20, validated at 30 too
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").config["train"]["iterations"] == 60
    with pytest.raises(ValueError, match=r"train.iterations \(60 in the checkpoint, 50 now\), train.log_every \(20 in "
                                         r"the checkpoint, 10 now\) differ .* not below the 60 done"):
        run(compose_config([*budget, "train.iterations=50", "train.log_every=10"], output_dir=tmp_path))


def test_mode_eval_on_the_command_line_applies_eval_overrides(tmp_path, small_budget):
    run(compose_config(small_budget, output_dir=tmp_path / "train"))
    checkpoint = tmp_path / "train" / "checkpoints" / "best.pt"
    out = run_cli("mode=eval", f"checkpoint={checkpoint}", "eval.episodes=10", "algo.test_inner_steps=3",
                  f"hydra.run.dir={tmp_path}/eval")
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (results["test/episodes"], results["test/inner_steps"], len(results["test/mse_by_step"])) == (10, 3, 4)
    assert results["checkpoint"] == str(checkpoint)
    bad = run_cli("mode=eval", f"checkpoint={checkpoint}", "algo=fomaml", f"hydra.run.dir={tmp_path}/bad")
    assert bad.returncode == 1 and "mode=eval re-evaluates the checkpoint's own algo" in bad.stderr
    missing = run_cli("mode=eval", f"hydra.run.dir={tmp_path}/missing")
    assert missing.returncode == 1 and "mode=eval needs checkpoint=PATH" in missing.stderr


def test_mode_eval_scores_the_checkpoints_own_algorithm_and_records_the_config_it_evaluated(tmp_path, small_budget):
    run(compose_config([*small_budget, "algo.inner_lr=0.02"], output_dir=tmp_path / "train"))
    checkpoint = tmp_path / "train" / "checkpoints" / "best.pt"
    for override, group, own in (("algo.name=fomaml", "algo", "maml"), ("algo._target_=my.ALGORITHM", "algo", "maml"),
                                 ("dataset.name=omniglot", "dataset", "sinusoid")):
        bad = run_cli("mode=eval", f"checkpoint={checkpoint}", override, f"hydra.run.dir={tmp_path}/bad")
        assert bad.returncode == 1 and bad.stderr == (f"metarun: error: mode=eval scores the checkpoint's own {group} "
                                                      f"({own}); drop {override}, or train a run with it\n")
        assert not (tmp_path / "bad").exists()
    done = run_cli("mode=eval", f"checkpoint={checkpoint}", "eval.episodes=10", f"hydra.run.dir={tmp_path}/eval")
    assert done.returncode == 0, done.stderr
    # the config evaluated: the checkpoint's inner rate, not the default job's 0.01, with this command's overrides
    recorded = OmegaConf.load(tmp_path / "eval" / ".hydra" / "config.yaml")
    assert (recorded.algo.inner_lr, recorded.eval.episodes, recorded.train.iterations) == (0.02, 10, 60)


def test_an_eval_override_of_a_key_the_checkpoints_dataset_lacks_lists_its_keys(tmp_path):
    # a checkpoint of a dataset conf/ has no option for (its own name): the command composed another dataset
    saved = load_checkpoint(V1 / "sinusoid_maml_best.pt").config
    cfg = compose_config(["dataset=omniglot", "dataset.root=/data/omniglot"], output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^dataset.root is not a key of the checkpoint's dataset \(sinusoid\); dataset "
                                         r"has _target_, name, shots, queries, amplitude, phase, x_range$"):
        checkpoint_config(cfg, saved, ["dataset.root=/data/omniglot"])


def test_mode_eval_reads_a_checkpoint_from_before_the_newer_hardware_keys(tmp_path):
    run(compose_config(TINY, output_dir=tmp_path / "train"))
    state = load_checkpoint(tmp_path / "train" / "checkpoints" / "best.pt")
    for key in ("precision", "tf32", "channels_last", "compile"):
        del state.config["hardware"][key]
    save_checkpoint(tmp_path / "old.pt", state)
    results = evaluate_checkpoint(compose_config(["mode=eval", f"checkpoint={tmp_path / 'old.pt'}"],
                                                 output_dir=tmp_path / "eval"))
    assert results["hardware/task_parallel"] in ("vmap", "loop") and results["test/nonfinite"] == 0


@pytest.mark.parametrize("overrides, message", [
    (["algo=protonet"], "algo=protonet does not support regression (dataset=sinusoid); pick a classification dataset"),
])
def test_algorithm_dataset_mismatch_is_a_clear_error(tmp_path, small_budget, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(compose_config([*small_budget, *overrides], output_dir=tmp_path))


def test_a_diverged_validation_never_becomes_the_best_checkpoint(tmp_path, small_budget, monkeypatch):
    real_evaluate = train.evaluate
    calls = {"val": 0}

    def first_validation_diverges(task_fn, weights, source, split, *args):
        results = real_evaluate(task_fn, weights, source, split, *args)
        if split == "val":
            calls["val"] += 1
            if calls["val"] == 1:
                results["val/mse"] = float("nan")
        return results

    monkeypatch.setattr(train, "evaluate", first_validation_diverges)
    run(compose_config([*small_budget, "train.val_every=20"], output_dir=tmp_path))
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert calls["val"] == 3 and best["iteration"] in (40, 60)


def test_a_checkpoint_from_before_a_key_existed_resumes_as_the_run_it_was(tmp_path, small_budget, capsys):
    run(compose_config([*small_budget, "train.iterations=40"], output_dir=tmp_path))
    # as written before algo.first_order existed (the way model.depth is new to older Conv-4 runs)
    last = tmp_path / "checkpoints" / "last.pt"
    older = load_checkpoint(last)
    del older.config["algo"]["first_order"]
    save_checkpoint(last, older)
    # a key set otherwise than its default is a change to the run, named with the value the old run had
    with pytest.raises(ValueError, match=r"algo.first_order \(False in the checkpoint, True now\) differ"):
        run(compose_config([*small_budget, "train.iterations=60", "algo.first_order=true"], output_dir=tmp_path))
    run(compose_config([*small_budget, "train.iterations=60"], output_dir=tmp_path))
    assert "resumed from iteration 40 of 60" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["iterations"] == 60
