"""Backbone depth as a setting: ``model.depth`` of Conv-N and ``model.widths`` of ResNet-12 change the network,
their defaults and configs saved without them build the networks of before, and bad values stop at start-up in
one line naming the key."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from metarun.config.validate import check
from metarun.models import build_model, without_head
from metarun.models.conv4 import Conv4
from metarun.models.network import build_network, describe
from metarun.models.resnet12 import Block
from metarun.runner.checkpoint import load_checkpoint
from metarun.runner.components import algorithm_of
from tests.conftest import REPO, TINY, compose_config, run_cli

SHAPES = [(1, 28, 28), (3, 84, 84)]  # Omniglot's and miniImageNet's images


def papers_conv4(input_shape: tuple, width: int, max_pool: bool) -> nn.Sequential:
    """Conv-4 from its description, in plain torch layers: four [conv, BN, ReLU, max-pool or a stride-2 conv]
    blocks, flatten, a linear head to 5 ways."""
    layers, channels, side = [], input_shape[0], input_shape[1]
    for _ in range(4):
        layers += [nn.Conv2d(channels, width, 3, stride=1 if max_pool else 2, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(), *([nn.MaxPool2d(2)] if max_pool else [])]
        channels, side = width, side // 2 if max_pool else (side + 1) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, 5))


def structure(model: nn.Sequential) -> tuple:
    """What a checkpoint of ``model`` depends on: its layers' kinds and strides and its parameters' names and shapes."""
    layers = [(type(layer).__name__, getattr(layer, "stride", None)) for layer in model]
    return layers, [(name, tuple(p.shape)) for name, p in model.named_parameters()]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_pool", [True, False])
def test_depth_4_is_the_papers_conv4_layer_for_layer(shape, max_pool):
    reference = structure(papers_conv4(shape, 8, max_pool))
    assert structure(Conv4(shape, 5, width=8, max_pool=max_pool)) == reference
    assert structure(Conv4(shape, 5, width=8, depth=4, max_pool=max_pool)) == reference


def test_a_checkpoint_saved_before_depth_builds_the_network_it_trained():
    checkpoint = load_checkpoint(REPO / "tests" / "fixtures" / "checkpoint_v1" / "omniglot_mamlpp_best.pt")
    saved = OmegaConf.create(checkpoint.config)
    assert "depth" not in saved.model
    algorithm, settings = algorithm_of(saved)
    _, params = build_network(saved, algorithm, settings, checkpoint.data["input_shape"],
                              checkpoint.data["output_dim"], torch.device("cpu"))  # as mode=eval and load_learner do
    assert {name: p.shape for name, p in params.items()} == {name: p.shape for name, p in checkpoint.params.items()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_pool", [True, False])
def test_depth_6_adds_two_blocks_that_keep_the_image_size(shape, max_pool):
    conv4, conv6 = Conv4(shape, 5, width=8, max_pool=max_pool), Conv4(shape, 5, width=8, depth=6, max_pool=max_pool)
    assert conv6(torch.randn(2, *shape)).shape == (2, 5)
    convs = [layer for layer in conv6 if isinstance(layer, nn.Conv2d)]
    assert [conv.stride for conv in convs] == [(1, 1) if max_pool else (2, 2)] * 4 + [(1, 1)] * 2
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in conv6) == (4 if max_pool else 0)
    # Chen et al. (2019)'s Conv-6: the extra blocks work on Conv-4's last feature maps, so the head is Conv-4's
    assert conv6[-1].in_features == conv4[-1].in_features
    extra_block = 8 * 8 * 9 + 8 + 2 * 8  # conv weight and bias, batch-norm scale and shift
    assert sum(p.numel() for p in conv6.parameters()) - sum(p.numel() for p in conv4.parameters()) == 2 * extra_block


def test_shallower_nets_halve_fewer_times_and_too_small_images_name_the_largest_depth():
    assert Conv4((1, 28, 28), 5, width=8, depth=2)[-1].in_features == 8 * 7 * 7
    assert Conv4((1, 8, 8), 5, width=8, depth=3)(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"^model.depth=6 max-pools 8x8 images 4 times, to nothing; use "
                                         r"model.depth<=3 or dataset.image_size>=16$"):
        Conv4((1, 8, 8), 5, depth=6)


def block_widths(model: nn.Sequential) -> list:
    """The output channels of each residual block of a ResNet-12, in order."""
    return [block.body[0].out_channels for block in model if isinstance(block, Block)]


def test_resnet12_with_two_widths_has_two_blocks_and_a_64_d_embedding():
    cfg = compose_config(["model=resnet12", "model.widths=[32,64]"])
    model = build_model(cfg.model, (3, 84, 84), 5)
    assert block_widths(model) == [32, 64]
    x = torch.randn(2, 3, 84, 84)
    headless = without_head(model)
    assert model(x).shape == (2, 5) and headless(x).shape == (2, 64) and headless.embedding_dim == 64


def test_resnet12_keeps_the_papers_four_blocks_by_default():
    model = build_model(compose_config(["model=resnet12"]).model, (3, 84, 84), 5)
    assert block_widths(model) == [64, 160, 320, 640]


@pytest.mark.parametrize("override, message", [
    ("model.depth=0", r"^model.depth must be > 0, got 0"),
    ("+model.deptj=6", r"^model.deptj is not a config key; did you mean model.depth\?"),
])
def test_bad_depth_is_one_line_naming_the_key_at_validation(override, message):
    with pytest.raises(ValueError, match=message):
        check(compose_config(["dataset=omniglot", override]))


@pytest.mark.parametrize("widths, message", [
    ("[]", r"^model.widths must list a positive channel count per block, got \[\]; set e.g. model.widths="),
    ("[64,0]", r"^model.widths must list a positive channel count per block, got \[64, 0\]"),
    ("[8,8,8,8,8]", r"^model.widths lists 5 blocks, each max-pooling, but 28x28 images allow 4; list at most 4 "
                    r"widths or use dataset.image_size>=32$"),
])
def test_bad_widths_are_one_line_naming_the_key_when_the_model_is_built(widths, message):
    cfg = compose_config(["model=resnet12", f"model.widths={widths}"])
    check(cfg)  # a list's entries have no range rule in the schema: the backbone checks them as it is built
    with pytest.raises(ValueError, match=message):
        build_model(cfg.model, (1, 28, 28), 5)


def test_describe_names_the_backbone_its_settings_and_its_parameter_count():
    cfg = compose_config(["dataset=omniglot", "model.depth=6"])
    model = build_model(cfg.model, (1, 28, 28), 5)
    count = sum(p.numel() for p in model.parameters())
    assert describe(model, cfg.model) == (f"model: conv4 (width=64, depth=6, max_pool=true, norm=batch), "
                                          f"{count:,} parameters")
    cfg = compose_config(["model=resnet12", "model.widths=[32,64]"])
    headless = without_head(build_model(cfg.model, (3, 84, 84), 5))
    assert describe(headless, cfg.model).startswith("model: resnet12 (widths=[32,64], norm=batch), ")


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    """A copy of examples/own_algorithm, whose dataset (my_data) makes images of any size with no files."""
    return shutil.copytree(REPO / "examples" / "own_algorithm", tmp_path_factory.mktemp("depth") / "example",
                           ignore=shutil.ignore_patterns("__pycache__", "outputs"))


def test_maml_trains_and_re_evaluates_a_conv5_from_the_command_line(example_folder):
    trained = run_cli("hydra.searchpath=[file://conf]", "algo=maml", "dataset=my_data", "dataset.image_size=28",
                      "model=conv4", "model.width=8", "model.depth=5", *TINY, "hardware.task_parallel=loop",
                      "hydra.run.dir=conv5", cwd=example_folder)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "test/acc" in json.loads((example_folder / "conv5" / "results.json").read_text())
    params = torch.load(example_folder / "conv5" / "checkpoints" / "best.pt", weights_only=True)["params"]
    assert sum(value.dim() == 4 for value in params.values()) == 5  # five conv kernels
    # mode=eval rebuilds the network from the checkpoint's saved config, depth included
    tested = run_cli("mode=eval", "checkpoint=conv5/checkpoints/best.pt", *TINY[1:], "hydra.run.dir=eval",
                     cwd=example_folder)
    assert tested.returncode == 0, tested.stderr[-2000:]


def test_bad_widths_stop_the_command_in_one_line(example_folder):
    run = run_cli("hydra.searchpath=[file://conf]", "algo=protonet", "dataset=my_data", "model=resnet12",
                  "model.widths=[]", *TINY, "hydra.run.dir=bad", cwd=example_folder)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["metarun: error: model.widths must list a positive channel count per "
                                               "block, got []; set e.g. model.widths=[64,160,320,640]"]
