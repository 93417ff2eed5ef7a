"""The `metarun` command: Hydra composes the config, `train.run` does the work."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metarun import config
from metarun.config import check
from metarun.errors import RunError

config.register()


@hydra.main(config_path="pkg://metarun.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run one job and return its primary validation metric, which sweepers optimise (mode=eval: the test metric)."""
    # torch loads only once the config is known to be good
    from metarun.evaluate import evaluate_checkpoint
    from metarun.train import run

    try:
        if cfg.mode == "eval":
            check(cfg)
            results = evaluate_checkpoint(cfg, list(HydraConfig.get().overrides.task))
            return next(value for key, value in results.items() if key.startswith("test/"))  # test/<metric> is first
        return run(cfg)
    except (RunError, ValueError, FileNotFoundError) as err:
        # one line naming the problem and the fix; the traceback would bury it
        print(f"metarun: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
