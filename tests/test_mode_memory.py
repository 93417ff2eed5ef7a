"""task_parallel=auto's choice is remembered per machine and setting: a rerun picks the same mode, bit for bit."""

import json
import os
from pathlib import Path

import pytest
import torch

from metarun import mode_memory, task_parallel
from metarun.train import run
from tests.conftest import TINY, compose_config

BUDGET = [*TINY, "dataset=sinusoid", "algo=maml", "algo.test_inner_steps=2"]


def fixed_timings(monkeypatch, winner: str) -> list:
    """Make the modes time as if ``winner`` were clearly the fastest (the timing steps still run); the returned
    list grows by one entry per timing."""
    real_time_modes, timings = task_parallel.time_modes, []

    def time_modes(step, modes, *args):
        real_time_modes(step, modes, *args)
        timings.append(modes)
        return {mode: 0.001 if mode == winner else 0.01 for mode in modes}

    monkeypatch.setattr("metarun.task_parallel.time_modes", time_modes)
    return timings


def tuning_file() -> Path:
    return Path(os.environ["METARUN_CACHE"]) / "task_parallel.json"


def results(directory) -> dict:
    return json.loads((directory / "results.json").read_text())


def test_a_rerun_reuses_the_remembered_choice_and_reproduces_the_run(tmp_path, monkeypatch, capsys):
    fixed_timings(monkeypatch, "loop")
    run(compose_config(BUDGET, output_dir=tmp_path / "first"))
    assert [entry["mode"] for entry in json.loads(tuning_file().read_text()).values()] == ["loop"]
    timings = fixed_timings(monkeypatch, "vmap")  # timing now would pick vmap: the rerun must not time
    capsys.readouterr()
    run(compose_config(BUDGET, output_dir=tmp_path / "again"))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("hardware.task_parallel"))
    assert line.startswith("hardware.task_parallel=auto: loop (meta-step")
    assert line.endswith(f"; as timed before on this machine (delete {tuning_file()} to time again)")
    assert timings == []
    first, again = results(tmp_path / "first"), results(tmp_path / "again")
    assert again["hardware/task_parallel"] == "loop"
    for key in ("test/mse", "val/mse", "test/mse_by_step"):
        assert again[key] == first[key], key


def test_another_setting_is_timed_for_itself(tmp_path, monkeypatch):
    fixed_timings(monkeypatch, "loop")
    run(compose_config(BUDGET, output_dir=tmp_path / "four"))
    timings = fixed_timings(monkeypatch, "vmap")
    run(compose_config([*BUDGET, "train.meta_batch_size=3"], output_dir=tmp_path / "three"))
    assert len(timings) == 1 and results(tmp_path / "three")["hardware/task_parallel"] == "vmap"
    assert sorted(entry["mode"] for entry in json.loads(tuning_file().read_text()).values()) == ["loop", "vmap"]


def test_another_machine_does_not_reuse_the_choice(monkeypatch):
    setting, device = {"phase": "train", "meta_batch": 4}, torch.device("cpu")
    here = mode_memory.ModeMemory(tuning_file(), setting, device, "train")
    here.keep({"vmap": 1.0, "loop": 2.0}, "vmap")
    assert mode_memory.ModeMemory(tuning_file(), setting, device, "train").recall() == {"vmap": 1.0, "loop": 2.0}
    monkeypatch.setattr(mode_memory.hardware, "available_cores", lambda: 64)
    assert mode_memory.ModeMemory(tuning_file(), setting, device, "train").recall() is None


def test_a_corrupt_tuning_file_is_timed_afresh_and_rewritten(tmp_path, monkeypatch):
    tuning_file().parent.mkdir(parents=True, exist_ok=True)
    tuning_file().write_text('{"half-written')
    timings = fixed_timings(monkeypatch, "loop")
    with pytest.warns(UserWarning, match=r"ignoring hardware.tuning_file=.*task_parallel.json: .*rewritten"):
        run(compose_config(BUDGET, output_dir=tmp_path))
    assert len(timings) == 1 and [e["mode"] for e in json.loads(tuning_file().read_text()).values()] == ["loop"]


def test_an_unwritable_tuning_file_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    fixed_timings(monkeypatch, "loop")
    with pytest.warns(UserWarning, match=r"cannot write hardware.tuning_file=.*not-a-folder/choices.json"):
        run(compose_config([*BUDGET, f"hardware.tuning_file={blocker}/choices.json"], output_dir=tmp_path / "run"))
    assert results(tmp_path / "run")["hardware/task_parallel"] == "loop"


def test_null_tuning_file_times_every_run(tmp_path, monkeypatch):
    timings = fixed_timings(monkeypatch, "loop")
    for name in ("a", "b"):
        run(compose_config([*BUDGET, "hardware.tuning_file=null"], output_dir=tmp_path / name))
    assert len(timings) == 2 and not tuning_file().exists()
