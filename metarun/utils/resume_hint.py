"""The override a message tells the user to paste to continue a run, written so that it survives the paste.

A run directory's name holds its overrides (``0_algo=protonet,seed=1``), and paths may hold spaces, quotes or
``$``: pasted bare, the shell splits or expands them and Hydra reads ``,`` as a sweep and ``=`` as a syntax error.
"""

import re
import shlex
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode


def pasteable(key: str, value) -> str:
    """``key=value`` as one shell word that the shell, then Hydra's override parser and OmegaConf read back as
    exactly the string ``value``: bare where all three leave it as it is (most paths), else in Hydra's quotes."""
    text = str(value)
    if shlex.quote(text) != text or not reads_back(key, text):
        # OmegaConf would resolve ${...}: backslashes before it double and one more escapes it
        text = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + r"\${", text)
        # Hydra's quoted strings: backslashes before a quote, or before the closing one, double; a quote is escaped
        text = '"' + re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + (f"\\{m[2]}" if m[2] else ""), text) + '"'
    return shlex.quote(f"{key}={text}")


def reads_back(key: str, text: str) -> bool:
    """Whether Hydra reads the bare ``key=text`` as the string ``text`` (not a number, a sweep, an error)."""
    try:
        return OverridesParser.create().parse_override(f"{key}={text}").value() == text
    except HydraException:
        return False


def same_command(run_dir: Optional[Path] = None, sweep_dir: Optional[Path] = None) -> str:
    """"the same command with hydra.run.dir=RUN_DIR", pasteable; for a sweep (``sweep_dir``, or a job of a sweep)
    "… with hydra.sweep.dir=SWEEP_DIR", which puts every job back in its directory, where it resumes."""
    if sweep_dir is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_dir = HydraConfig.get().sweep.dir
    key, value = ("hydra.run.dir", run_dir) if sweep_dir is None else ("hydra.sweep.dir", sweep_dir)
    return f"the same command with {pasteable(key, value)}"
