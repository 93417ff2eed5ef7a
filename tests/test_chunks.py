"""hardware.vmap_chunk=auto: a meta-step that runs out of memory is retried on the same meta-batch in halved chunks
and the run goes on as one started with the chunk that fits; any other setting, or a chunk of one, is one line naming
the fix. Running out of GPU memory is stood in for by raising torch's OutOfMemoryError above a chunk size."""

import json

import pytest
import torch

from metarun.config.validate import check
from metarun.mapping.task_parallel import meta_backward
from metarun.runner.train import run
from metarun.utils.errors import RunError
from tests.conftest import compose_config
from tests.synthetic import image_config

BUDGET = ["algo=maml", "train.iterations=8", "train.meta_batch_size=8", "train.log_every=2", "train.val_every=4",
          "logger.jsonl=true"]


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture
def fits_two_tasks(monkeypatch):
    """vmap holds at most 2 tasks' graphs; the attempts' chunks in ``attempts``."""
    attempts = []

    def small_memory(task_fn, params, batch, mapping, scale, autocast=None, vmap_chunk=None):
        chunk = min(vmap_chunk or batch.num_tasks, batch.num_tasks) if mapping == "vmap" else 1
        attempts.append(chunk)
        if chunk > 2:
            out_of_memory()
        return meta_backward(task_fn, params, batch, mapping, scale, autocast, vmap_chunk)

    monkeypatch.setattr("metarun.runner.train.meta_backward", small_memory)
    return attempts


def lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_auto_halves_the_chunk_until_it_fits_and_runs_as_that_chunk_would(tmp_path, fits_two_tasks, capsys):
    run(image_config([*BUDGET, "hardware.task_parallel=vmap", "hardware.vmap_chunk=auto"], output_dir=tmp_path / "a"))
    assert fits_two_tasks[:3] == [8, 4, 2] and set(fits_two_tasks[3:]) == {2}
    out = capsys.readouterr().out
    assert "hardware.vmap_chunk=auto: out of memory with 8 tasks at once; backpropagating 4 at a time" in out
    assert "out of memory with 4 tasks at once; backpropagating 2 at a time from now on" in out
    # the failed attempts drew nothing and changed nothing: the run is the one with chunks of 2 from the start
    run(image_config([*BUDGET, "hardware.task_parallel=vmap", "hardware.vmap_chunk=2"], output_dir=tmp_path / "two"))
    assert lines(tmp_path / "a") == lines(tmp_path / "two")


@pytest.mark.parametrize("overrides, held", [
    (["hardware.task_parallel=vmap"], "8 of its 8 tasks at once (vmap)"),
    (["hardware.task_parallel=vmap", "hardware.vmap_chunk=4"], "4 of its 8 tasks at once (vmap)"),
])
def test_running_out_of_memory_otherwise_is_one_line_with_the_fix(tmp_path, monkeypatch, overrides, held):
    monkeypatch.setattr("metarun.runner.train.meta_backward", out_of_memory)
    with pytest.raises(RunError) as stopped:
        run(image_config([*BUDGET, *overrides], output_dir=tmp_path))
    assert str(stopped.value) == (f"out of CPU memory in a meta-step holding {held}; set hardware.vmap_chunk=auto "
                                  "(vmap in chunks that fit)")


def test_out_of_memory_one_task_at_a_time_names_what_makes_a_task_smaller(tmp_path, monkeypatch):
    monkeypatch.setattr("metarun.runner.train.meta_backward", out_of_memory)
    for mapping in ["loop", "vmap"]:
        cfg = image_config([*BUDGET, f"hardware.task_parallel={mapping}", "hardware.vmap_chunk=auto"],
                           output_dir=tmp_path / mapping)
        with pytest.raises(RunError, match="algo.checkpoint_inner=true for the MAML family"):
            run(cfg)


@pytest.mark.parametrize("value", ["0", "-2", "half", "1.5"])
def test_a_chunk_that_is_not_null_auto_or_a_positive_integer_is_refused(value):
    with pytest.raises(ValueError, match=rf"^hardware.vmap_chunk={value} is not null, auto or a positive integer"):
        check(compose_config([f"hardware.vmap_chunk={value}"]))
