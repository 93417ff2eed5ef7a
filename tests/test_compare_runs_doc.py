"""docs/compare_runs.md: each of its commands is run (small budget) by one of the tests named here."""

from tests.docs import doc_commands

RUN_BY = {
    "metarun -m algo=maml,fomaml dataset.shots=5,10": "tests/report/test_report.py (the sweep fixture)",
    "metarun-report outputs/multirun": "tests/report/test_report.py",
    "algo=maml dataset=omniglot": "tests/test_readme.py (the quick runs, on the real subsets)",
    "algo=protonet dataset=omniglot": "tests/test_readme.py (the quick runs, on the real subsets)",
    "metarun-report --paired": "tests/test_readme.py (the quick runs' paired comparison)",
    "hydra/sweeper=optuna_tpe": "tests/test_sweep.py",
    "hydra/launcher=local": "tests/test_sweep.py",
    "hydra/launcher=slurm": "tests/test_sweep.py (composed: no cluster here)",
    "logger=wandb": "tests/logging/test_wandb.py",
}


def test_every_doc_command_is_run_by_a_test():
    commands = [" ".join(c) for c in doc_commands()]
    assert len(commands) == len(RUN_BY)
    for command in commands:
        assert command in RUN_BY or sum(marker in command for marker in RUN_BY) == 1, command
