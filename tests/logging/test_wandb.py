"""wandb for real, offline: config, metrics with their steps, summary and identity read back from the run file."""

import json

import pytest
import wandb
from omegaconf import OmegaConf

from metarun.logging.wandb import WandbLogger, has_credentials
from metarun.runner.train import run
from metarun.utils.errors import RunError
from tests.conftest import TINY, compose_config, run_cli
from tests.docs import doc_command
from tests.logging.wandb_files import offline_run


def test_bad_wandb_mode_is_rejected_naming_the_key():
    from metarun.config.validate import check
    with pytest.raises(ValueError, match="logger.wandb.mode=on is not one of online, offline, disabled"):
        check(compose_config(["logger=wandb", "logger.wandb.mode=on"]))


def test_sweep_with_wandb_logs_config_metrics_summary_and_identity(tmp_path, no_wandb_login):
    assert not has_credentials()
    sweep = tmp_path / "sweep"
    out = run_cli(*doc_command("logger=wandb"), *TINY, f"hydra.sweep.dir={sweep}", "seed=1")
    assert out.returncode == 0, out.stderr
    # no login: one line each saying how to upload later, and no prompt (the run finished)
    assert out.stderr.count("logging offline — upload later with `wandb sync") == 4
    run_dirs = sorted(sweep.glob("*_algo=*"))
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        recorded = offline_run(run_dir)
        results = json.loads((run_dir / "results.json").read_text())
        algo = results["algo"]
        assert recorded["config"]["algo"]["name"] == algo
        assert recorded["config"]["paths"]["output_dir"] == str(run_dir)  # resolved, not ${hydra:...}
        steps = [row for row in recorded["history"] if "train/loss" in row]
        assert [row["_step"] for row in steps] == [10, 20]
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [row["train/loss"] for row in steps] == pytest.approx([m["train/loss"] for m in metrics])
        assert recorded["summary"]["test/mse"] == pytest.approx(results["test/mse"])
        assert recorded["summary"]["test/mse_ci95"] == pytest.approx(results["test/mse_ci95"])
        meta = recorded["run"]
        assert meta.run_group == sweep.name and meta.job_type == "train"
        assert meta.display_name.startswith(f"algo={algo},")  # override_dirname; seed is excluded
        assert list(meta.tags) == [algo, "sinusoid", "mlp", f"{results_shots(run_dir)}-shot"]


def test_failed_run_still_finishes_wandb_and_keeps_local_logs(tmp_path, no_wandb_login, monkeypatch):
    from dataclasses import replace

    from metarun.algos import maml

    failing = lambda *args: (_ for _ in ()).throw(RunError("boom"))  # noqa: E731
    monkeypatch.setattr(maml, "ALGORITHM", replace(maml.ALGORITHM, meta_loss=failing))
    cfg = compose_config(["logger=wandb", "logger.wandb.mode=offline", *TINY], output_dir=tmp_path)
    with pytest.raises(RunError, match="boom"):
        run(cfg)
    wandb.teardown()  # the in-process wandb service writes the run file out when it stops
    recorded = offline_run(tmp_path)
    assert recorded["config"]["train"]["iterations"] == 20
    # closed and marked failed, so the next job of a multirun starts a fresh wandb run
    assert recorded["exit_code"] == 1
    assert (tmp_path / "metrics.jsonl").exists()


def results_shots(run_dir):
    """The run's dataset.shots from its saved config."""
    return OmegaConf.load(run_dir / ".hydra" / "config.yaml").dataset.shots


def test_unreachable_server_falls_back_to_offline_instead_of_failing(tmp_path, no_wandb_login, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # logged in, as far as metarun can tell
    real_init = wandb.init

    def init(mode, **kwargs):
        if mode == "online":
            raise wandb.errors.CommError("network is unreachable")
        return real_init(mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    logger = WandbLogger(compose_config(["logger=wandb", *TINY], output_dir=tmp_path), tmp_path)
    logger.log(10, {"train/loss": 1.0})
    logger.finish({"test/mse": 0.5, "test/mse_ci95": 0.1})
    wandb.teardown()
    assert "wandb could not start online (network is unreachable); logging offline" in capsys.readouterr().err
    assert offline_run(tmp_path)["summary"]["test/mse"] == 0.5


def test_a_netrc_login_for_the_wandb_host_counts_as_credentials(tmp_path, no_wandb_login, monkeypatch):
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert has_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not has_credentials()
