"""The commands of the docs page "Sweeps, launchers and trackers" (docs/compare_runs.md), for the tests that run
them."""

import shlex

from tests.test_readme import _page, _shell_lines


def doc_commands() -> list:
    """Every ``metarun``/``metarun-report`` line of the page's shell blocks, split like a shell would."""
    return [shlex.split(line) for line in _shell_lines(_page("compare_runs")) if line.startswith("metarun")]


def doc_command(marker: str) -> list:
    """The arguments (after the program name) of the doc command that is ``marker``, else the one containing it."""
    commands = [c for c in doc_commands() if " ".join(c) == marker] or [c for c in doc_commands() if marker in " ".join(c)]
    (command,) = commands
    return command[1:]
