"""metarun: config-driven meta-learning experiment runner."""

import importlib

__version__ = "0.2.0"


# public name: its module, imported on first use
_LAZY = {"load_learner": "metarun.learner", "run": "metarun.api"}


def __getattr__(name: str):
    """``metarun.load_learner`` and ``metarun.run``, imported on first use so that the CLI starts without loading
    torch."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metarun' has no attribute {name!r}")
