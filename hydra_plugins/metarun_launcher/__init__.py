"""metarun's Hydra plugin, ``hydra/launcher=local``, found by Hydra's scan of the ``hydra_plugins`` namespace
(Hydra's documented way for a project to ship a plugin).

The launcher extends submitit's local launcher, which the ``sweep`` extra installs. Without it the launcher's module
is not imported: Hydra's scan imports every module of the namespace whose name does not start with ``_`` and warns
of each that fails, at every start.
"""

from importlib.util import find_spec

if find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
    from hydra_plugins.metarun_launcher._parallel_local import ParallelLocalLauncher  # noqa: F401
