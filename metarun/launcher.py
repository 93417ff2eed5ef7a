"""``hydra/launcher=local``: submitit's local launcher, telling each job how many jobs share the machine.

It starts all of a batch's jobs at once; each job then sizes its threads from its share of the cores
(``hardware.available_cores``). Needs the ``sweep`` extra (hydra-submitit-launcher); ``config.register``
imports this module only where that is installed.
"""

import os

from hydra.core.plugins import Plugins
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher


class ParallelLocalLauncher(LocalLauncher):
    """``LocalLauncher`` that sets ``METARUN_PARALLEL_JOBS`` to the number of jobs it starts together."""

    def launch(self, job_overrides, initial_job_idx: int):
        """Start ``job_overrides``' jobs at once, each knowing how many there are."""
        from metarun.hardware import PARALLEL_JOBS  # here: the CLI loads torch only once the config is good

        # submitit copies this process's environment into each job it starts
        os.environ[PARALLEL_JOBS] = str(len(job_overrides))
        return super().launch(job_overrides, initial_job_idx)


def install() -> None:
    """Make the ``submitit_local`` launcher (``hydra/launcher=local``) a ``ParallelLocalLauncher``.

    Hydra 1.3 instantiates launchers only from classes it found under the ``hydra_plugins`` namespace, which an
    editable install of metarun cannot extend (facebookresearch/hydra#3252), so this maps the name that
    ``submitit_local``'s ``_target_`` gives to the subclass.
    """
    Plugins.instance().class_name_to_class[f"{LocalLauncher.__module__}.{LocalLauncher.__qualname__}"] = (
        ParallelLocalLauncher)
