"""The run config's schemas, their checks and metarun's side of Hydra; free of torch, so the CLI checks a config
before it loads torch.

- ``fields.py``: how a schema field is declared (default, help line, ``choice``/``positive`` rule, ``@schema``);
- ``algos.py``, ``datasets.py``, ``models.py``: the settings schema of each built-in component;
- ``run.py``: the rest of the run config (hardware, logger, paths, train, optim, eval) and ``Config``, the whole;
- ``validate.py``: the checks, each refusal one line naming the key;
- ``store.py``: the ConfigStore and the resolvers; ``run_names.py`` and ``help.py`` are two of them.

A schema of your own (an algorithm or dataset outside metarun) is declared with ``setting``, ``choice`` and
``positive``, imported from here.
"""

# every schema module, so that fields.SCHEMAS (filled by their @schema) is whole whichever module is imported first
from metarun.config import algos, datasets, models, run  # noqa: F401
from metarun.config.fields import choice, positive, setting

__all__ = ["choice", "positive", "setting"]
