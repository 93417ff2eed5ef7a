"""The `metarun` command: Hydra composes the config, `train.run` does the work.

Every error a user can cause ends in one line naming the problem and the fix, with a non-zero exit: Hydra's
own composition errors are re-worded here (``main``), a job's errors in ``job``. In a sweep a failing job
does not stop the jobs launched with it; the sweep exits non-zero after them, naming the failed ones.
"""

import os
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from metarun import __version__
from metarun.config import store
from metarun.config.validate import check, unknown_key
from metarun.runner.preemption import Preempted
from metarun.utils.allocator import use_huge_pages
from metarun.utils.errors import PREFIX, RunError, StartRefused
from metarun.utils.resume_hint import same_command

store.register()
USER_ERRORS = (RunError, ValueError, FileNotFoundError)
FAILED_JOBS = []  # the sweep's jobs that failed in this process, for the summary line


@hydra.main(config_path="pkg://metarun.conf", config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> float:
    """Run one job and return its primary validation metric, which sweepers optimise (mode=eval: the test metric)."""
    try:
        return run_job(cfg, list(HydraConfig.get().overrides.task))
    except KeyboardInterrupt:  # outside the training loop (set-up, meta-test), or a second Ctrl-C
        hint = "" if cfg.mode == "eval" else (f"; run {same_command(cfg.paths.output_dir)} to continue from its "
                                              "last checkpoint (resume=auto)")
        fail(f"interrupted (Ctrl-C){hint}", code=130)
    except Exception as err:
        # a stop signal (Preempted) stops a sweep too
        if HydraConfig.get().mode != RunMode.MULTIRUN or isinstance(err, Preempted):
            if isinstance(err, USER_ERRORS):
                fail(str(err))
            raise
        # the sweeper runs the jobs launched with this one, then raises the first failure
        number, overrides = HydraConfig.get().job.num, " ".join(HydraConfig.get().overrides.task)
        FAILED_JOBS.append(number)
        cause = str(err) if isinstance(err, USER_ERRORS) else f"{err.__class__.__name__}: {err}"
        print(f"{PREFIX}job #{number} ({overrides}): {cause}", file=sys.stderr)
        raise


def run_job(cfg: DictConfig, overrides: list) -> float:
    """A job's work in ``paths.output_dir``: meta-train and meta-test (the last validation metric), or with
    ``mode=eval`` re-evaluate the checkpoint with the command line's ``overrides`` (the test metric). A job that
    fails before it wrote anything leaves no run directory behind (the command's and ``metarun.run``'s alike)."""
    # torch loads only once the config is known to be good
    from metarun.logging.console import show_progress
    from metarun.runner.evaluate import evaluate_checkpoint
    from metarun.runner.run_dir import RunDirectory, discard_unstarted, is_empty
    from metarun.runner.train import run

    run_dir = Path(cfg.paths.output_dir)
    created = is_empty(run_dir)  # made for this job
    try:
        if cfg.mode == "eval":
            check(cfg)
            show_progress(cfg.logger.console)
            with RunDirectory(run_dir) as directory:
                results = evaluate_checkpoint(cfg, overrides, record=directory.record)
            return next(value for key, value in results.items() if key.startswith("test/"))  # test/<metric> is first
        return run(cfg)
    except Exception:
        if created:
            discard_unstarted(run_dir)
        raise


def main() -> None:
    """The console script: ``job`` under Hydra, with Hydra's and Ctrl-C's reports made one line."""
    use_huge_pages()  # before torch, which loads only once the config is good, allocates anything
    if "--version" in sys.argv[1:]:  # before Hydra, whose own --version names Hydra's; no config is composed
        print(f"metarun {__version__}")
        return
    # a user's own algorithm, dataset or model (``_target_: my_algo.ALGORITHM``) imports from the folder metarun
    # starts in, as with ``python -m``
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return job()  # the user asked for Hydra's full tracebacks
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its own report
    FAILED_JOBS.clear()
    if any(arg.startswith("mode=") for arg in sys.argv):
        from metarun.runner.evaluate import with_own_groups  # here: torch loads only for a checkpoint

        sys.argv[1:] = with_own_groups(sys.argv[1:])
    try:
        job()
    except KeyboardInterrupt:  # while Hydra composes
        fail("interrupted (Ctrl-C)", code=130)
    except StartRefused as err:  # the run directory cannot be made
        fail(str(err))
    except (CompactHydraException, OmegaConfBaseException) as err:
        if not FAILED_JOBS:  # else a job's own error, reported as it failed
            # Hydra composes every job of a sweep before it starts one
            fail(composition_error(err) + ("; no job of the sweep ran" if multirun() else ""))
    except Exception as err:  # raised by a sweeper once the jobs launched with the failed one have run
        if not (multirun() or FAILED_JOBS):
            raise  # a single run's unexpected error: its traceback is the report
        if not FAILED_JOBS:  # the job ran in a process of its own (a submitit launcher), which reported it
            fail(f"a job of the sweep failed: {err.__class__.__name__}: {err}")
    finally:
        del os.environ["HYDRA_FULL_ERROR"]
    if FAILED_JOBS:  # also where a sweeper tolerates failures (Optuna's max_failure_rate) and returns
        numbers = ", ".join(f"#{number}" for number in FAILED_JOBS)
        fail(f"job{'s' if len(FAILED_JOBS) > 1 else ''} {numbers} of the sweep failed (named above); the results of "
             "the jobs that ran are in their run directories")


def multirun() -> bool:
    """Whether the command line asks for a sweep."""
    return bool({"-m", "--multirun"} & set(sys.argv))


def composition_error(err: Exception) -> str:
    """Hydra's report of a config that does not compose, as one line and without its advice to add keys with
    ``+`` (a misspelt key gets the schema's closest key instead)."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    unknown = isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and is_dataclass(cause.object_type)
    if unknown and cause.full_key:
        return unknown_key(cause.full_key, [f.name for f in fields(cause.object_type)])
    report = str(err).split("\nTo append to your config use")[0].split("\nConfig search path")[0]
    if cause is not err:
        report += f": {cause}"
    return "; ".join(line.strip() for line in report.splitlines() if line.strip()).replace(":; ", ": ")


def fail(message: str, code: int = 1) -> None:
    """End the process with ``metarun: error: MESSAGE``: one line naming the problem and the fix."""
    print(f"{PREFIX}{message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
