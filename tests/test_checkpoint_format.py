"""The checkpoint format: one versioned record, and checkpoints written by earlier versions still resume,
re-evaluate and load. The version-1 files in tests/fixtures/checkpoint_v1 were written by metarun at commit
e89ada5 (before the format had a version): a finished sinusoid MAML run, the same run stopped at iteration 10
(killed in iteration 15: its last.pt and best.pt) and an Omniglot MAML++ best.pt."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from metarun import load_learner
from metarun.runner.checkpoint import FORMAT_VERSION, Checkpoint, load_checkpoint, peek_config, save_checkpoint
from metarun.runner.evaluate import evaluate_checkpoint
from metarun.runner.train import run
from metarun.utils.errors import RunError
from tests.conftest import compose_config

V1 = Path(__file__).parent / "fixtures" / "checkpoint_v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())
# the command that wrote the sinusoid fixture (its .hydra/overrides.yaml)
SINUSOID_RUN = ["debug=default", "logger.console=false", "hardware.num_threads=1", "hardware.task_parallel=loop",
                "experiment=maml_sinusoid_10shot"]


def test_a_version_1_checkpoint_reads_as_the_current_record():
    checkpoint = load_checkpoint(V1 / "sinusoid_maml_last.pt")
    assert isinstance(checkpoint, Checkpoint) and checkpoint.version == FORMAT_VERSION == 3
    assert checkpoint.iteration == 20 and checkpoint.rng["device"] == "cpu" and checkpoint.data["inverted"] is False
    # version 1 named algorithms and datasets by name only; the record names their implementations
    assert checkpoint.config["algo"]["_target_"] == "metarun.algos.maml.ALGORITHM"
    assert checkpoint.config["dataset"]["_target_"] == "metarun.data.sinusoid.DATASET"
    assert load_checkpoint(V1 / "omniglot_mamlpp_best.pt").data["inverted"] is True


def resumed_figures(tmp_path, stopped: str) -> dict:
    """The meta-test figures (EXPECTED's keys) of the version-1 run ``stopped``, resumed to its end."""
    run_dir = tmp_path / stopped
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(V1 / f"{stopped}_last.pt", run_dir / "checkpoints" / "last.pt")
    shutil.copy(V1 / f"{stopped}_best.pt", run_dir / "checkpoints" / "best.pt")
    run(compose_config([*SINUSOID_RUN, "resume=true"], run_dir))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["iterations"] == 20
    return {key: results[key] for key in EXPECTED["sinusoid_maml_results"]}


def as_written(figures: dict) -> dict:
    """EXPECTED's ``figures`` to float rounding: they were written on another CPU, whose vector units may sum in
    another order (AVX2 against AVX-512), so only this machine's own runs can agree bit for bit."""
    return {key: pytest.approx(value, rel=1e-6) for key, value in figures.items()}


def test_a_version_1_run_resumes_to_the_figures_of_the_uninterrupted_run(tmp_path):
    # the finished run only meta-tests again; the one stopped at iteration 10 trains 10 more iterations from its
    # optimiser, schedule and random streams, and ends where the uninterrupted run ended, bit for bit
    finished = resumed_figures(tmp_path, "sinusoid_maml")
    assert resumed_figures(tmp_path, "sinusoid_maml_at10") == finished
    assert finished == as_written(EXPECTED["sinusoid_maml_results"])


def test_a_version_1_checkpoint_re_evaluates_to_its_own_figures(tmp_path):
    overrides = ["mode=eval", f"checkpoint={V1 / 'sinusoid_maml_best.pt'}", "hardware.num_threads=1"]
    cfg = compose_config(overrides, tmp_path / "eval")
    results = evaluate_checkpoint(cfg, overrides)
    figures = {key: results[key] for key in EXPECTED["sinusoid_maml_results"]}
    assert figures == as_written(EXPECTED["sinusoid_maml_results"])


@pytest.mark.parametrize("transductive", [True, False])
def test_load_learner_on_a_version_1_checkpoint_predicts_as_it_did(transductive):
    images = np.random.default_rng(0).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    learner = load_learner(V1 / "omniglot_mamlpp_best.pt", transductive=transductive)
    logits = learner.adapt(images[:5], ["a", "b", "c", "d", "e"]).logits(images[5:])
    expected = torch.tensor(EXPECTED["omniglot_mamlpp_logits"]["transductive" if transductive else "inductive"])
    # Written on another CPU: float32 (unit rounding 6e-8) through MAML++'s inner steps and a Conv-4 of 576-term sums,
    # summed in another order by other vector units or threads, differs by up to 1.4e-6 of the logits' largest
    # magnitude (measured at AVX-512, AVX2 and without vector units, on 1 and 2 threads). A logit near zero is a
    # difference of terms of that size, so its error is absolute: 1e-5 of the largest magnitude, and 1e-4 relative.
    # A wrong weight, preprocessing or normalisation moves the logits by 1e-2 to 1.
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_a_checkpoint_round_trips_with_its_version_and_a_newer_one_is_refused(tmp_path):
    checkpoint = load_checkpoint(V1 / "sinusoid_maml_last.pt")
    save_checkpoint(tmp_path / "v3.pt", checkpoint)
    again = load_checkpoint(tmp_path / "v3.pt")
    assert again.version == 3 and again.config == checkpoint.config and again.iteration == checkpoint.iteration
    assert all(torch.equal(again.params[name], p) for name, p in checkpoint.params.items())
    torch.save({**checkpoint.state_dict(), "version": 4}, tmp_path / "v4.pt")
    with pytest.raises(RunError, match="format version 4, newer than this metarun's 3; upgrade metarun"):
        load_checkpoint(tmp_path / "v4.pt")


def version_2(checkpoint: Checkpoint, **dataset) -> dict:
    """``checkpoint`` as version 2 wrote it, with its dataset config's keys ``dataset`` (version 2's names)."""
    config = {**checkpoint.config, "dataset": {**checkpoint.config["dataset"], **dataset}}
    config["dataset"].pop("episodes_within", None)
    return {**checkpoint.state_dict(), "version": 2, "config": config}


@pytest.mark.parametrize("within_alphabet, episodes_within", [(True, "group"), (False, "split")])
def test_a_version_2_checkpoint_names_its_episode_structure_as_version_3(tmp_path, within_alphabet,
                                                                         episodes_within):
    checkpoint = load_checkpoint(V1 / "omniglot_mamlpp_best.pt")
    torch.save(version_2(checkpoint, within_alphabet=within_alphabet, drawers_apart=True), tmp_path / "v2.pt")
    for config in (load_checkpoint(tmp_path / "v2.pt").config, peek_config(tmp_path / "v2.pt")):
        assert config["dataset"]["episodes_within"] == episodes_within and "within_alphabet" not in config["dataset"]
        assert config["dataset"]["drawers_apart"] is True  # Omniglot's own key


def test_a_version_2_checkpoint_of_drawers_apart_outside_omniglot_is_refused_in_one_line(tmp_path):
    checkpoint = load_checkpoint(V1 / "sinusoid_maml_best.pt")
    torch.save(version_2(checkpoint, within_alphabet=False, drawers_apart=False), tmp_path / "apart_false.pt")
    assert "drawers_apart" not in load_checkpoint(tmp_path / "apart_false.pt").config["dataset"]
    torch.save(version_2(checkpoint, within_alphabet=False, drawers_apart=True), tmp_path / "apart_true.pt")
    with pytest.raises(RunError, match=r"^a checkpoint of dataset=sinusoid with dataset.drawers_apart=true, "
                                       r"which metarun now offers for Omniglot only; [^\n]*$"):
        load_checkpoint(tmp_path / "apart_true.pt")
