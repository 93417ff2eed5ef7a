"""task_parallel=auto's choice is remembered per machine and setting: a rerun picks the same mapping, bit for bit; a
tuning file that holds something else is left as it is, named in one warning line."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from metarun.mapping import remembered, task_parallel
from metarun.runner.train import run
from tests.conftest import TINY, compose_config

BUDGET = [*TINY, "dataset=sinusoid", "algo=maml", "algo.test_inner_steps=2"]


def fixed_timings(monkeypatch, winner: str) -> list:
    """Make the mappings time as if ``winner`` were clearly the fastest (the timing steps still run); the returned
    list grows by one entry per timing."""
    real_race, timings = task_parallel.race, []

    def race(step, mappings, *args, **kwargs):
        real_race(step, mappings, *args, **kwargs)
        timings.append(mappings)
        return {mapping: 0.001 if mapping == winner else 0.01 for mapping in mappings}, True

    monkeypatch.setattr("metarun.mapping.task_parallel.race", race)
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
    assert line.startswith("hardware.task_parallel=auto: loop (a step of a few tasks: ")
    assert line.endswith(f"; as timed before on this machine (delete {tuning_file()} to time again)")
    assert timings == []
    first, again = results(tmp_path / "first"), results(tmp_path / "again")
    assert again["hardware/task_parallel"] == "loop"
    for key in ("test/mse", "val/mse", "test/mse_by_step"):
        assert again[key] == first[key], key


def test_another_setting_is_timed_for_itself_and_another_size_reuses_the_choice(tmp_path, monkeypatch):
    fixed_timings(monkeypatch, "loop")
    run(compose_config(BUDGET, output_dir=tmp_path / "first"))
    timings = fixed_timings(monkeypatch, "vmap")
    run(compose_config([*BUDGET, "train.meta_batch_size=3", "dataset.shots=5"], output_dir=tmp_path / "sizes"))
    assert timings == [] and results(tmp_path / "sizes")["hardware/task_parallel"] == "loop"
    run(compose_config([*BUDGET, "algo.inner_steps=2"], output_dir=tmp_path / "steps"))
    assert len(timings) == 1 and results(tmp_path / "steps")["hardware/task_parallel"] == "vmap"
    assert sorted(entry["mode"] for entry in json.loads(tuning_file().read_text()).values()) == ["loop", "vmap"]


def test_another_machine_does_not_reuse_the_choice(monkeypatch):
    setting, device = {"phase": "train", "meta_batch": 4}, torch.device("cpu")
    here = remembered.RememberedChoice(tuning_file(), setting, device, "train")
    here.keep({"vmap": 1.0, "loop": 2.0}, "vmap")
    assert remembered.RememberedChoice(tuning_file(), setting, device, "train").recall() == {"vmap": 1.0, "loop": 2.0}
    monkeypatch.setattr(remembered.hardware, "available_cores", lambda: 64)
    assert remembered.RememberedChoice(tuning_file(), setting, device, "train").recall() is None


# what a tuning file can hold that is not metarun's object of timings, and what the warning says of it
NOT_TIMINGS = {
    "a folder": (None, "is a folder"),
    "invalid JSON": (b'{"half-written', r"is not JSON \(Unterminated string starting at: line 1 column 2 \(char 1\)\)"),
    "a JSON list": (b"[1, 2]", "holds JSON other than the object of timings metarun writes"),
    "a JSON number": (b"42", "holds JSON other than the object of timings metarun writes"),
    "bytes that are not UTF-8": (b"\xff\xfe{", r"is not JSON \('utf-8' codec can't decode byte 0xff in position 0: "
                                              r".*\)"),
}


@pytest.mark.parametrize("content", NOT_TIMINGS)
def test_a_tuning_file_holding_something_else_is_kept_with_one_warning_and_the_run_goes_on(content, tmp_path, capsys):
    held, problem = NOT_TIMINGS[content]
    path = tmp_path / "tuning.json"
    if held is None:
        path.mkdir()
    else:
        path.write_bytes(held)
    run(compose_config([*BUDGET, f"hardware.tuning_file={path}"], output_dir=tmp_path / "run"))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]  # once
    assert re.fullmatch(rf"warning: hardware\.tuning_file={re.escape(str(path))} {problem}; left as it is, and "
                        r"task_parallel=auto's choice is not remembered: move it away or set hardware\.tuning_file "
                        "to another file", line), line
    assert path.is_dir() if held is None else path.read_bytes() == held  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tuning.json", "tuning.json.lock"]  # no temp file
    assert results(tmp_path / "run")["hardware/task_parallel"] in ("vmap", "loop", "threads")


def test_an_unreadable_tuning_file_is_kept_and_named_once(tmp_path, monkeypatch, capsys):
    path = tmp_path / "tuning.json"
    path.write_text("{}")
    read_text = Path.read_text

    def refused(self, *args, **kwargs):  # root reads anything: refuse as a file of another user's would be
        if self == path:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)
    memory = remembered.RememberedChoice(path, {"phase": "train"}, torch.device("cpu"), "train")
    assert memory.recall() is None
    memory.keep({"vmap": 1.0, "loop": 2.0}, "vmap")
    assert capsys.readouterr().out == (f"warning: hardware.tuning_file={path} cannot be read ([Errno 13] Permission "
                                       f"denied: '{path}'); left as it is, and task_parallel=auto's choice is not "
                                       "remembered: move it away or set hardware.tuning_file to another file\n")
    assert read_text(path) == "{}"


def test_an_unwritable_tuning_file_warns_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    fixed_timings(monkeypatch, "loop")
    run(compose_config([*BUDGET, f"hardware.tuning_file={blocker}/choices.json"], output_dir=tmp_path / "run"))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert line.startswith(f"warning: cannot write hardware.tuning_file={blocker}/choices.json (")
    assert results(tmp_path / "run")["hardware/task_parallel"] == "loop"


def test_null_tuning_file_times_every_run(tmp_path, monkeypatch):
    timings = fixed_timings(monkeypatch, "loop")
    for name in ("a", "b"):
        run(compose_config([*BUDGET, "hardware.tuning_file=null"], output_dir=tmp_path / name))
    assert len(timings) == 2 and not tuning_file().exists()
