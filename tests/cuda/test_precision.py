"""Mixed precision on the GPU: bf16 autocast, and fp16 with its loss scaler, train a learner well above chance."""

import json

import pytest
import torch

from metarun.runner.train import run
from tests.synthetic import image_config

pytestmark = pytest.mark.cuda


def train_and_check(tmp_path, device, precision: str) -> None:
    """A short MAML run at ``precision`` on easy synthetic classes sampled on ``device``: its training loss falls
    and it meta-tests well above chance."""
    run(image_config(["algo=maml", "algo.inner_lr=0.1", "algo.test_inner_steps=5", "train.iterations=40",
                      "logger.jsonl=true", f"hardware.device={device}", f"hardware.precision={precision}"],
                     output_dir=tmp_path, noise=30.0))
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0], losses  # means over iterations 1-10 and 31-40 (fp32 on the CPU: 0.90, 0.59)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test/nonfinite"] == 0 and results["test/acc"] > 0.6, results  # chance is 0.2


def test_bf16_autocast_trains_and_learns(tmp_path, device, images_on_device):
    train_and_check(tmp_path, device, "bf16")


def test_fp16_with_the_loss_scaler_trains_and_learns(tmp_path, cuda, images_on_device):
    train_and_check(tmp_path, cuda, "fp16")
    scaler = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["scaler"]
    assert scaler["scale"] > 0  # the scaler ran and is saved for a resumed run
