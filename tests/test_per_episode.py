"""Every meta-test keeps each episode's result (test_episodes.npz), and a long evaluation shows its progress."""

import json
import math

import numpy as np

from metarun.logging.episodes import read_episodes
from metarun.runner.train import run
from tests.conftest import TINY, compose_config, run_cli

SINUSOID = [*TINY, "dataset=sinusoid", "algo=maml", "algo.test_inner_steps=2", "eval.episodes=30"]


def test_the_meta_test_and_mode_eval_keep_each_episode_of_the_same_fixed_episodes(tmp_path):
    run(compose_config(SINUSOID, output_dir=tmp_path / "train"))
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    kept = read_episodes(tmp_path / "train" / "test_episodes.npz")
    assert list(kept.index) == list(range(30)) and kept.curve.shape == (30, 3)
    assert math.isclose(kept.metric.mean(), results["test/mse"], rel_tol=1e-6)
    np.testing.assert_allclose(kept.curve.mean(0), results["test/mse_by_step"], rtol=1e-6)
    assert kept.meta == {"format": 1, "split": "test", "seed": 0, "ways": None, "shots": 10, "queries": 10,
                         "metric": "mse", "dataset": "sinusoid", "algo": "maml"}
    # the checkpoint re-evaluated scores the same episodes: the same figures, episode by episode
    out = run_cli("mode=eval", f"checkpoint={tmp_path / 'train' / 'checkpoints' / 'best.pt'}",
                  f"hydra.run.dir={tmp_path / 'eval'}", "logger.console=false")
    assert out.returncode == 0, out.stderr
    again = read_episodes(tmp_path / "eval" / "test_episodes.npz")
    assert again.meta == kept.meta
    np.testing.assert_allclose(again.metric, kept.metric, rtol=1e-5)


def test_a_long_evaluation_reports_each_tenth_of_its_episodes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("metarun.logging.console.LINE_EVERY_S", 0.0)  # every chunk gets its line
    budget = [*SINUSOID, "logger.console=true", "eval.episodes=100", "eval.val_episodes=40", "eval.batch_size=100"]
    run(compose_config(budget, output_dir=tmp_path))
    err = capsys.readouterr().err
    # 100 test episodes in one batch of eval.batch_size=100 still show ten steps; 40 validation episodes show four
    assert "[test (100 episodes)] 10/10 " in err and "[test (100 episodes)] 1/10 " in err
    assert "[val (40 episodes)] 4/4 " in err
