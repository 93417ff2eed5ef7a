"""Each setting's algorithm and its settings as a run gets them: the run config composed with ``algo=<option>``
(conf/algo/<option>.yaml over its schema, every key the option does not set at its default), the setting's values
for the keys that config has, then ``metarun.runner.components.algorithm_of`` (located, validated, checked)."""

import functools

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from metarun.config import store
from metarun.runner.components import algorithm_of


@functools.cache
def run_config(option: str):
    """The run config with ``algo=<option>``, as Hydra composes a run's (composed once per option)."""
    store.register()
    with initialize_config_module(config_module="metarun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[f"algo={option}"])


def algorithm_settings(setting: dict, **changes) -> tuple:
    """``(algorithm, settings)`` of the setting's ``algo``, with the setting's values and ``changes`` for the keys
    its config has (as ``algo.KEY=VALUE`` would set them; the other keys, ways or width, are the benchmark's)."""
    cfg = run_config(setting["algo"])
    values = {key: value for key, value in {**setting, **changes}.items() if key in cfg.algo}
    return algorithm_of(OmegaConf.merge(cfg, {"algo": values}))
