"""TensorBoard: event files in ``<run dir>/tensorboard``, so ``tensorboard --logdir outputs`` shows every run.

Every scalar metric is logged at its step, the final results at the last iteration, and the resolved config as
text (the TEXT tab).
"""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from metarun.logging.destinations import check_folder, run_folder
from metarun.logging.scalars import ScalarSeries

FOLDER = "tensorboard"  # in the run directory


def check(logger: DictConfig) -> None:
    """A one-line RunError, before the run starts, when the event files' folder cannot be written."""
    check_folder("logger.tensorboard.enabled=true", run_folder(logger) / FOLDER)


class TensorBoardLogger(ScalarSeries):
    """Writes one run's events; a resumed run appends to the same directory."""

    def __init__(self, cfg: DictConfig, run_dir: Path, start: int = 0):
        """Open the writer under ``run_dir`` and record the full config ``cfg``; a run resumed from iteration
        ``start`` hides the events logged after it, which the run logs again."""
        super().__init__()
        self.writer = SummaryWriter(str(run_dir / FOLDER), purge_step=start + 1 if start else None)
        # a fenced block: the TEXT tab renders Markdown, which would reflow the YAML
        self.writer.add_text("config", f"```yaml\n{OmegaConf.to_yaml(cfg, resolve=True)}```", global_step=start)

    def write(self, step: int, values: dict) -> None:
        """One scalar event per value at ``step``."""
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def finish(self, results) -> None:
        """Write the final ``results`` (none when the run failed) and close the files."""
        try:
            if results is not None:
                self.write_results(results)
        finally:
            self.writer.close()
