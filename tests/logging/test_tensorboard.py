"""TensorBoard for real: scalars with their steps, final results and the config read back by TensorBoard's reader."""

import pytest
from omegaconf import OmegaConf

from metarun.logging import build_loggers
from tests.conftest import compose_config
from tests.logging.trackers import RESULTS, drive, tensorboard_run


def test_scalars_at_their_steps_final_results_and_the_config_as_text(tmp_path):
    cfg = compose_config(["logger=[none,tensorboard]"], output_dir=tmp_path)
    drive(build_loggers(cfg, tmp_path))
    recorded = tensorboard_run(tmp_path)
    scalars = recorded["scalars"]
    assert scalars["train/loss"] == [(10, 1.5), (20, pytest.approx(0.9))]
    assert scalars["val/mse"] == [(10, pytest.approx(1.2)), (20, pytest.approx(0.8))]  # not again with the results
    assert scalars["test/mse"] == [(20, pytest.approx(0.7))] and scalars["best/iteration"] == [(20, 20)]
    assert not {"val/mse_by_step", "test/mse_by_step", "algo"} & set(scalars)  # curves and text are not scalars
    config = OmegaConf.create(recorded["config"].removeprefix("```yaml\n").removesuffix("```"))
    assert config.algo.name == "maml" and config.paths.output_dir == str(tmp_path)  # resolved


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    cfg = compose_config(["logger=[none,tensorboard]"], output_dir=tmp_path)
    first = build_loggers(cfg, tmp_path)
    drive(first, {10: {"train/loss": 1.0}, 20: {"train/loss": 0.5}, 30: {"train/loss": 0.4}}, results=None)
    # killed after logging iteration 30, resumed from the checkpoint of iteration 20
    drive(build_loggers(cfg, tmp_path, start=20), {30: {"train/loss": 0.3}}, {**RESULTS, "iterations": 30})
    assert tensorboard_run(tmp_path)["scalars"]["train/loss"] == [(10, 1.0), (20, 0.5), (30, pytest.approx(0.3))]
