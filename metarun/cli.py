"""The `metarun` command: Hydra composes the config, `train.run` does the work."""

import sys

import hydra
from omegaconf import DictConfig

from metarun import config
from metarun.errors import RunError

config.register()


@hydra.main(config_path="pkg://metarun.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run one job and return its primary validation metric, which sweepers optimise."""
    from metarun.train import run  # torch loads only once the config is known to be good

    try:
        return run(cfg)
    except (RunError, ValueError, FileNotFoundError) as err:
        # one line naming the problem and the fix; the traceback would bury it
        print(f"metarun: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
