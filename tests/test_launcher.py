"""hydra/launcher=local tells each job how many jobs it starts at once."""

import os

import pytest
from hydra.core.plugins import Plugins

from metarun import config
from metarun.hardware import PARALLEL_JOBS

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the sweep extra is not installed")
from metarun import launcher  # noqa: E402  (needs the sweep extra)


def test_launch_sets_the_number_of_jobs_it_starts_together_before_starting_them(monkeypatch):
    monkeypatch.setenv(PARALLEL_JOBS, "1")  # restored after the test
    seen = {}

    def start(self, job_overrides, initial_job_idx):
        seen["jobs"] = os.environ[PARALLEL_JOBS]
        return list(job_overrides)

    monkeypatch.setattr(launcher.LocalLauncher, "launch", start)  # submitit's own launch, which starts the jobs
    jobs = [["algo=maml"], ["algo=fomaml"], ["algo=anil"]]
    assert launcher.ParallelLocalLauncher().launch(jobs, initial_job_idx=0) == jobs
    assert seen["jobs"] == "3"


def test_submitit_local_starts_the_parallel_launcher_once_metarun_has_registered():
    config.register()
    stock = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert Plugins.instance().class_name_to_class[stock] is launcher.ParallelLocalLauncher
