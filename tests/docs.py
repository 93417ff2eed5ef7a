"""The commands of the README's "Compare runs" section, for the tests that run them."""

import re
import shlex

from tests.conftest import REPO


def _section() -> str:
    return (REPO / "README.md").read_text().split("## Compare runs\n", 1)[1].split("\n## ", 1)[0]


def doc_commands() -> list:
    """Every ``metarun``/``metarun-report`` line in the section's fenced blocks, split like a shell would."""
    blocks = re.findall(r"```\n(.*?)```", _section(), re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("metarun")]


def doc_command(marker: str) -> list:
    """The arguments (after the program name) of the doc command that is ``marker``, else the one containing it."""
    commands = [c for c in doc_commands() if " ".join(c) == marker] or [c for c in doc_commands() if marker in " ".join(c)]
    (command,) = commands
    return command[1:]
