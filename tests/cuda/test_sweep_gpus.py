"""A local sweep on one GPU: ``hardware.jobs_per_gpu=2`` runs two jobs side by side on it, each training on its
cuda:0, and the third once both have finished."""

import os

import pytest

from tests.test_launcher import assert_batches, gpu_sweep

pytestmark = pytest.mark.cuda


def test_two_jobs_share_one_gpu_and_the_third_waits_for_them(cuda, tmp_path):
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]  # one GPU of this machine
    jobs = gpu_sweep(tmp_path / "sweep", "0,1,2", "hardware.jobs_per_gpu=2", listed=gpu)
    assert [(job["gpu"], job["device"]) for job in jobs] == [(gpu, "cuda:0")] * 3
    assert_batches(jobs, [[0, 1], [2]])
