"""Every YAML composes; bad values fail at start-up naming the key and the fix."""

from dataclasses import dataclass, field, fields
from typing import List

import pytest
from omegaconf import MISSING, OmegaConf

from metarun.config.algos import InnerLoopConfig, ReptileConfig
from metarun.config.fields import choice, positive
from metarun.config.run import Config
from metarun.config.run_names import dirname
from metarun.config.validate import check, validated
from tests.conftest import CONF, compose_config

GROUP_FILES = sorted(p for p in CONF.glob("*/*.yaml"))
# options with mandatory values (???) the user supplies on the command line
REQUIRED = {"dataset/imagefolder": ["dataset.train=a", "dataset.val=b", "dataset.test=c"]}


def test_main_config_composes_to_maml_on_sinusoid():
    cfg = compose_config()
    assert (cfg.algo.name, cfg.dataset.name, cfg.model._target_) == ("maml", "sinusoid", "metarun.models.mlp.MLP")
    assert OmegaConf.select(cfg, "experiment") is None


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_option_composes(path):
    option = f"{path.parent.name}/{path.stem}"
    cfg = compose_config([f"{path.parent.name}={path.stem}", *REQUIRED.get(option, [])], output_dir="/tmp/unused")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check(cfg)


def test_experiment_preset_overrides_main_config():
    cfg = compose_config(["experiment=maml_sinusoid_10shot"])
    assert cfg.train.iterations == 70000
    assert (cfg.dataset.shots, cfg.eval.shots, cfg.eval.queries) == (10, 5, 100)


def test_fomaml_is_first_order_maml():
    cfg = compose_config(["algo=fomaml"])
    assert cfg.algo.first_order and cfg.algo.name == "fomaml"


@pytest.mark.parametrize("override, key", [
    ("algo.inner_lr=0", "algo.inner_lr"),
    ("algo.inner_lr=-0.1", "algo.inner_lr"),
    ("algo.inner_steps=0", "algo.inner_steps"),
    ("dataset.shots=0", "dataset.shots"),
    ("train.meta_batch_size=-1", "train.meta_batch_size"),
    ("eval.shots=0", "eval.shots"),
    ("train.max_minutes=0", "train.max_minutes"),
    ("optim.step_every=0", "optim.step_every"),
])
def test_non_positive_values_are_rejected_naming_the_key(override, key):
    cfg = compose_config([override])
    with pytest.raises(ValueError, match=rf"^{key} must be > 0"):
        check(cfg)


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_thread_counts_other_than_auto_or_positive_are_rejected_naming_the_key(value):
    with pytest.raises(ValueError, match=rf"^hardware.num_threads={value} is not auto or a positive integer; set "
                                         r"hardware.num_threads=auto"):
        check(compose_config([f"hardware.num_threads={value}"]))


def test_threads_default_to_auto_and_take_a_positive_count():
    assert compose_config().hardware.num_threads == "auto"
    check(compose_config(["hardware.num_threads=3"]))


def test_unknown_task_mapping_is_rejected():
    with pytest.raises(ValueError, match="hardware.task_parallel=fast is not one of auto, vmap, loop"):
        check(compose_config(["hardware.task_parallel=fast"]))


@pytest.mark.parametrize("override, message", [
    ("resume=maybe", "resume=maybe is not one of true, false, auto"),
    ("model.norm=group", "model.norm=group is not one of batch, running"),
    ("optim.schedule=exp", "optim.schedule=exp is not one of constant, linear, cosine, step"),
])
def test_unknown_choices_are_rejected_listing_the_valid_ones(override, message):
    overrides = [override, "dataset=omniglot"] if override.startswith("model") else [override]
    with pytest.raises(ValueError, match=message):
        check(compose_config(overrides))


def test_unknown_precision_and_inner_optimizer_are_rejected():
    with pytest.raises(ValueError, match="hardware.precision=fp8 is not one of fp32, bf16, fp16"):
        check(compose_config(["hardware.precision=fp8"]))
    with pytest.raises(ValueError, match="^algo.inner_optimizer=rmsprop is not one of adam, sgd$"):
        check(compose_config(["algo=reptile", "algo.inner_optimizer=rmsprop"]))


def test_choices_and_ranges_are_typed_on_the_schema_fields():
    assert fields_of(ReptileConfig)["inner_optimizer"].metadata["choices"] == ("adam", "sgd")
    assert ReptileConfig().inner_optimizer == "adam" and Config().resume == "auto"  # the first, or the one named
    assert fields_of(ReptileConfig)["test_inner_steps"].metadata["positive"]  # also where a subclass resets it


def test_a_field_a_subclass_redefines_keeps_its_base_fields_rule():
    @dataclass
    class Mine(InnerLoopConfig):
        name: str = "mine"
        inner_lr: float = 0.5

    with pytest.raises(ValueError, match="^algo.inner_lr must be > 0, got -1.0"):
        validated(OmegaConf.create({"_target_": "my_module.ALGORITHM", "inner_lr": -1}), Mine, "algo")


def test_keys_a_schema_lacks_are_not_range_checked():
    check(compose_config(["dataset=omniglot", "model=mlp"]))  # no model.norm, no model.width: nothing to check


@dataclass
class PluginConfig:
    """A user's own algorithm settings: a plain dataclass with metarun's field helpers."""

    name: str = "plugin"
    step: float = positive(0.1)
    mode: str = choice("fast", "slow")
    sizes: List[int] = field(default_factory=lambda: [1, 2])


def plugin_algo(**values):
    return OmegaConf.create({"algo": {"_target_": "my_module.ALGORITHM", "name": "plugin", **values},
                             "dataset": {"ways": 5}}).algo


def test_validated_returns_the_schema_dataclass_with_interpolations_resolved():
    settings = validated(plugin_algo(step="${dataset.ways}", sizes=[3]), PluginConfig, "algo")
    assert settings == PluginConfig(step=5.0, mode="fast", sizes=[3])


@pytest.mark.parametrize("values, message", [
    ({"stpe": 1}, r"^algo.stpe is not a config key; did you mean algo.step\? algo has name, step, mode, sizes"),
    ({"step": "big"}, r"^algo.step: Value 'big' of type 'str' could not be converted to Float \(PluginConfig\)$"),
    ({"sizes": ["a"]}, r"^algo.sizes\[0\]: Value 'a' of type 'str' could not be converted to Integer"),
    ({"step": 0}, r"^algo.step must be > 0, got 0.0; set e.g. algo.step=0.01$"),
    ({"mode": "medium"}, r"^algo.mode=medium is not one of fast, slow$"),
])
def test_validated_refuses_bad_settings_in_one_line_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        validated(plugin_algo(**values), PluginConfig, "algo")


def test_validated_names_a_value_the_schema_needs():
    @dataclass
    class Needs:
        path: str = MISSING

    with pytest.raises(ValueError, match=r"^dataset.path has no value; set dataset.path=\.\.\."):
        validated(OmegaConf.create({}), Needs, "dataset")


def test_validated_applies_a_registered_schema_to_the_composed_node():
    cfg = compose_config(["algo=reptile", "algo.inner_lr=0.5"])
    assert validated(cfg.algo, ReptileConfig, "algo") == ReptileConfig(inner_lr=0.5)
    with pytest.raises(ValueError, match="^algo.inner_steps must be > 0"):
        validated(compose_config(["algo=reptile", "algo.inner_steps=0"]).algo, ReptileConfig, "algo")


def test_run_directory_names_are_flat_and_bounded():
    assert dirname("algo=maml,dataset.root=../shared/data") == "algo=maml,dataset.root=.._shared_data"
    long_a, long_b = "optim.lr=" + "1" * 300, "optim.lr=" + "1" * 299 + "2"
    assert len(dirname(long_a)) == 120 and dirname(long_a) != dirname(long_b)
    assert dirname(long_a).startswith("optim.lr=111")


def fields_of(schema) -> dict:
    return {f.name: f for f in fields(schema)}


def test_algorithm_and_dataset_need_a_name_for_results_and_run_names():
    with pytest.raises(ValueError, match="algo.name is not set; give the algo option's YAML a name: line"):
        check(compose_config(["algo.name=''"]))
