"""Batch norm's two modes: batch statistics, and running averages recorded in training and used in eval mode."""

import pytest
import torch

from metarun.models.batchnorm import BatchNorm2d, evaluating, has_running_stats, recording
from metarun.models.conv4 import Conv4
from metarun.models.resnet12 import ResNet12


def _batch(seed=0):
    return torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def test_training_mode_normalises_with_batch_statistics_in_both_modes():
    x = _batch()
    batch, running = BatchNorm2d(3), BatchNorm2d(3, running=True)
    torch.testing.assert_close(running(x), batch(x))
    torch.testing.assert_close(running.running_mean, torch.zeros(3))  # nothing recorded outside ``recording``
    out = batch(x)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_recording_moves_the_averages_by_momentum_towards_the_batch_statistics():
    layer, x = BatchNorm2d(3, running=True, momentum=0.1), _batch()
    with torch.no_grad(), recording(layer):
        layer(x)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(layer.running_mean, 0.1 * mean)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * var)
    assert not layer.recording


def test_eval_mode_uses_the_averages_so_each_image_is_scored_alone():
    layer = BatchNorm2d(3, running=True)
    with torch.no_grad(), recording(layer):
        layer(_batch(1))
    x = _batch(2)
    with evaluating(layer):
        whole = layer(x)
        torch.testing.assert_close(torch.cat([layer(x[i : i + 1]) for i in range(len(x))]), whole)
        expected = (x - layer.running_mean.view(1, -1, 1, 1)) / torch.sqrt(layer.running_var.view(1, -1, 1, 1) + 1e-5)
        torch.testing.assert_close(whole, expected)
    assert layer.training


@pytest.mark.parametrize("build", [lambda norm: Conv4((1, 28, 28), 5, width=8, norm=norm),
                                   lambda norm: ResNet12((3, 16, 16), 5, widths=[4, 4, 4, 4], norm=norm)])
def test_backbones_keep_averages_only_in_running_mode(build):
    assert not has_running_stats(build("batch")) and not list(build("batch").buffers())
    assert has_running_stats(build("running"))
    with pytest.raises(ValueError, match="model.norm=bacth is not one of batch, running"):
        build("bacth")
