"""The commands of docs/compare_runs.md (the README's "Compare runs" section), for the tests that run them."""

import re
import shlex

from tests.conftest import REPO

DOC = REPO / "docs" / "compare_runs.md"


def doc_commands() -> list:
    """Every ``metarun``/``metarun-report`` line in the doc's fenced blocks, split like a shell would."""
    blocks = re.findall(r"```\n(.*?)```", DOC.read_text(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("metarun")]


def doc_command(marker: str) -> list:
    """The arguments (after the program name) of the doc command that is ``marker``, else the one containing it."""
    commands = [c for c in doc_commands() if " ".join(c) == marker] or [c for c in doc_commands() if marker in " ".join(c)]
    (command,) = commands
    return command[1:]
