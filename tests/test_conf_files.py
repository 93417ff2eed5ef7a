"""Group options say things once: a YAML option sets only the keys where it differs from its schema."""

import pytest
from omegaconf import DictConfig, OmegaConf

from metarun.config.fields import SCHEMAS
from metarun.config.run import LoggerConfig
from tests.conftest import CONF

OPTIONS = sorted(p for group in ("algo", "dataset", "model", "hardware", "logger", "paths")
                 for p in (CONF / group).glob("*.yaml"))
# logger=local turns the local files and console back on after none (logger=[none,local]): its keys are its point
NEEDED = {"logger/local": {"jsonl", "console"}}


def schema_of(group: str, option: DictConfig):
    """The schema an option starts from: the ``/schema/<group>/<name>@_here_`` in its defaults list; a logger
    option merges into the ``logger`` of the main config."""
    for entry in option.get("defaults", []):
        if isinstance(entry, str) and entry.startswith(f"/schema/{group}/"):
            return SCHEMAS[group][entry.removeprefix(f"/schema/{group}/").removesuffix("@_here_")]
    assert group == "logger", f"{group} options start from their schema (defaults: [/schema/{group}/<name>@_here_])"
    return LoggerConfig


def restated(option: DictConfig, defaults: DictConfig, prefix: str = ""):
    """The keys of ``option`` whose value equals the schema's ``defaults`` (interpolations compared as written)."""
    for key in option:
        if (key == "defaults" and not prefix) or key not in defaults:  # keys a schema lacks fail composing instead
            continue
        value, default = option._get_node(key), defaults._get_node(key)
        if isinstance(value, DictConfig) and isinstance(default, DictConfig):
            yield from restated(value, default, f"{prefix}{key}.")
        elif OmegaConf.to_container(OmegaConf.create({"v": value}), resolve=False) == \
                OmegaConf.to_container(OmegaConf.create({"v": default}), resolve=False):
            yield f"{prefix}{key}"


@pytest.mark.parametrize("path", OPTIONS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_options_set_only_what_differs_from_their_schema(path):
    option_id = f"{path.parent.name}/{path.stem}"
    option = OmegaConf.load(path)
    defaults = OmegaConf.structured(schema_of(path.parent.name, option))
    extra = set(restated(option, defaults)) - NEEDED.get(option_id, set())
    assert not extra, f"{option_id} restates its schema's defaults for {', '.join(sorted(extra))}: drop them"


def test_the_main_config_sets_no_run_keys():
    # every run key's default is its schema field's (metarun.config.Config); config.yaml only picks the groups
    assert set(OmegaConf.load(CONF / "config.yaml")) == {"defaults", "hydra"}
