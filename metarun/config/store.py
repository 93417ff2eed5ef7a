"""metarun's side of Hydra: every schema in the ConfigStore (``/schema/<group>/<option>``, and ``base_config``
under conf/config.yaml), and the resolvers conf/config.yaml calls: run and sweep-job directory names
(``run_names.py``) and the text of ``metarun --help`` (``help.py``)."""

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from metarun.config.fields import SCHEMAS
from metarun.config.help import help_section
from metarun.config.run import Config
from metarun.config.run_names import dirname, swept_dirname


def register() -> None:
    """Store every schema in Hydra's ConfigStore and register the ``dirname``, ``swept_dirname`` and
    ``metarun_help`` resolvers (idempotent)."""
    OmegaConf.register_new_resolver("dirname", dirname, replace=True)
    OmegaConf.register_new_resolver("swept_dirname", swept_dirname, replace=True)
    OmegaConf.register_new_resolver("metarun_help", help_section, replace=True)
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, schemas in SCHEMAS.items():
        for option, node in schemas.items():
            store.store(group=f"schema/{group}", name=option, node=node)
