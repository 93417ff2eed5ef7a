"""dataset=imagefolder: your own class-folder trees as episodes, and the image datasets' configs."""

import pytest
import torch
from hydra import compose, initialize_config_module
from imagetrees import write_tree, zip_tree
from omegaconf import OmegaConf

from metarun.config import store
from metarun.config.datasets import ImageFolderConfig
from metarun.data import build_tasks

CPU = torch.device("cpu")


@pytest.fixture
def trees(tmp_path):
    """Train as a folder plus a zip, val a folder, test a zip: RGB images of 6 + 4 / 5 / 5 classes."""
    for name, classes in (("train_a", 6), ("train_b", 4), ("val", 5), ("test", 5)):
        write_tree(tmp_path / name, {f"{name}_class{c}": 6 for c in range(classes)}, size=20, mode="RGB")
    zip_tree(tmp_path / "train_b", tmp_path / "train_b.zip")
    zip_tree(tmp_path / "test", tmp_path / "test.zip", wrapper="test/")
    return {"train": [str(tmp_path / "train_a"), str(tmp_path / "train_b.zip")], "val": str(tmp_path / "val"),
            "test": str(tmp_path / "test.zip")}


def imagefolder_cfg(tmp_path, **keys):
    base = OmegaConf.structured(ImageFolderConfig(cache_dir=str(tmp_path / "cache"), image_size=16, ways=3, queries=2))
    return OmegaConf.merge(base, keys)


def test_imagefolder_builds_episodes_from_folders_and_zips(tmp_path, trees):
    tasks = build_tasks(imagefolder_cfg(tmp_path, **trees, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]), CPU)
    assert [tasks.samplers[s].store.num_classes for s in ("train", "val", "test")] == [10, 5, 5]
    assert tasks.input_shape == (3, 16, 16) and tasks.output_dim == 3
    batch = tasks.sample(4, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (4, 3, 3, 16, 16) and -1 <= batch.support_x.min() < 0 < batch.query_x.max() <= 1
    grey = build_tasks(imagefolder_cfg(tmp_path, **trees, channels=1), CPU)
    assert grey.input_shape == (1, 16, 16)


def test_imagefolder_bad_settings_name_the_key(tmp_path, trees):
    with pytest.raises(ValueError, match="dataset.channels=2 is not supported"):
        build_tasks(imagefolder_cfg(tmp_path, **trees, channels=2), CPU)
    with pytest.raises(ValueError, match="dataset.mean and dataset.std need 1 or 3 values"):
        build_tasks(imagefolder_cfg(tmp_path, **trees, mean=[0.1, 0.2]), CPU)
    with pytest.raises(ValueError, match="dataset.test lists no images"):
        build_tasks(imagefolder_cfg(tmp_path, **{**trees, "test": []}), CPU)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist; set dataset.train/val/test"):
        build_tasks(imagefolder_cfg(tmp_path, **{**trees, "val": str(tmp_path / "nowhere")}), CPU)


@pytest.mark.parametrize("dataset", ["omniglot", "imagefolder"])
def test_image_datasets_compose_with_conv4_by_default_and_model_on_the_command_line_wins(dataset):
    store.register()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={dataset}"])
        assert cfg.model._target_ == "metarun.models.conv4.Conv4" and cfg.dataset.name == dataset
        assert compose("config", overrides=[f"dataset={dataset}", "model=mlp"]).model._target_ == "metarun.models.mlp.MLP"
        assert compose("config", overrides=["model=mlp", f"dataset={dataset}"]).model._target_ == "metarun.models.mlp.MLP"
        assert compose("config").model._target_ == "metarun.models.mlp.MLP"  # sinusoid keeps its MLP
        cfg = compose("config", overrides=[f"dataset={dataset}", "dataset.ways=20", "dataset.shots=5"])
        assert (cfg.dataset.ways, cfg.dataset.shots, cfg.dataset.queries) == (20, 5, 15)


def test_omniglot_config_defaults_follow_the_papers():
    store.register()
    with initialize_config_module("metarun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=omniglot", "paths.data_dir=/data", "paths.cache_dir=/cache"])
    # the data folder is only read: the cache goes to paths.cache_dir
    assert cfg.dataset.root == "/data/omniglot" and cfg.dataset.cache_dir == "/cache"
    assert (cfg.dataset.split, cfg.dataset.image_size, cfg.dataset.download) == ("vinyals", 28, True)
    assert cfg.dataset.rotations is None and cfg.model.width == 64


def test_classes_too_small_for_the_episodes_are_counted_in_a_warning(tmp_path, trees, capsys):
    write_tree(tmp_path / "val", {"val_class_small": 2, "val_class_tiny": 1})  # val: 5 classes of 6 images, 2 tiny
    build_tasks(imagefolder_cfg(tmp_path, **trees, shots=1, queries=2), CPU).check_episodes("val")
    assert ("warning: 2 of the 7 classes of the val split have fewer than 3 images (dataset.shots+dataset.queries) "
            "and are never drawn") in capsys.readouterr().out


def test_training_ways_may_exceed_a_held_out_split_that_evaluates_fewer(tmp_path, trees):
    # ProtoNet's recipe: 20-way training on miniImageNet's 64 classes, 5-way validation on its 16
    tasks = build_tasks(imagefolder_cfg(tmp_path, **trees, ways=8), CPU)  # train 10 classes, val and test 5
    tasks.check_episodes("val", ways=5)
    with pytest.raises(ValueError, match="^dataset.ways=8 exceeds the 5 classes of the val split"):
        tasks.check_episodes("val")


def test_a_tree_with_a_group_level_gives_episodes_within_groups(tmp_path, trees):
    grouped = {f"{alphabet}/char{c}": 4 for alphabet, count in (("A", 4), ("B", 3), ("C", 2)) for c in range(count)}
    write_tree(tmp_path / "grouped", grouped, size=20, mode="RGB")
    path = str(tmp_path / "grouped")
    tasks = build_tasks(imagefolder_cfg(tmp_path, train=path, val=path, test=path, episodes_within="group"), CPU)
    sampler = tasks.samplers["test"]
    assert sampler.group_names == ("A", "B", "C")
    alphabets = sampler.groups[sampler.pick_classes(200, 3, 3, torch.Generator().manual_seed(0))]
    assert bool((alphabets == alphabets[:, :1]).all()) and set(alphabets[:, 0].tolist()) == {0, 1}  # C has 2 classes
    with pytest.raises(ValueError, match="class train_a_class0 of the train split has none"):
        build_tasks(imagefolder_cfg(tmp_path, **trees, episodes_within="group"), CPU)
