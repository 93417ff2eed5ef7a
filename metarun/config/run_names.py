"""Run and sweep-job directory names (the ``dirname`` and ``swept_dirname`` resolvers of conf/config.yaml): the
overrides that tell a run apart, safe as one folder name and short enough for any file system."""

import hashlib
import re
from pathlib import Path
from typing import List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


def dirname(text: str, prefix: str = "", limit: int = 120) -> str:
    """``text`` (a run's overrides) as one safe directory name of at most ``limit`` characters after ``prefix``;
    empty without overrides, so a plain run's directory is its date alone.

    Paths in overrides would otherwise nest folders, and an Optuna trial's full-precision floats can pass the
    file system's 255-character limit; a hash of the whole text keeps shortened names distinct.
    """
    name = text.replace("/", "_")
    if not name:
        return ""
    if len(name) <= limit:
        return prefix + name
    return f"{prefix}{name[: limit - 9]}~{digest(text)}"


def digest(text: str) -> str:
    """8 hex digits of ``text``'s hash, which keep directory names cut from different texts distinct."""
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def swept_dirname(overrides: List[str], sweep_dir: str, prefix: str = "", limit: int = 120) -> str:
    """A sweep job's directory name: its values of the keys the sweep varies (``swept_name``), after ``prefix``;
    ``overrides`` are the job's own (``hydra.overrides.task``), ``sweep_dir`` the sweep's (``hydra.sweep.dir``).

    A job's config holds its own values only, so the sweep's arguments are read from the ``multirun.yaml`` that
    Hydra's basic sweeper saves in ``sweep_dir`` before it launches a job (the Optuna sweeper saves none).
    """
    name = swept_name(list(overrides), sweep_arguments(Path(sweep_dir) / "multirun.yaml"), limit)
    return prefix + name if name else ""


def sweep_arguments(saved: Path) -> Optional[List[str]]:
    """The overrides a sweep was started with, as its sweeper reads them (``hydra.sweeper.params``, then the
    command line), from the sweep's ``saved`` config; None where it saved none."""
    if not saved.is_file():
        return None
    hydra = OmegaConf.to_container(OmegaConf.load(saved).hydra, resolve=False)  # as typed, ${...} included
    params = hydra["sweeper"].get("params") or {}
    return [f"{key}={value}" for key, value in params.items()] + hydra["overrides"]["task"]


def swept_name(overrides: List[str], arguments: Optional[List[str]], limit: int = 120) -> str:
    """The name of the job with ``overrides`` in the sweep started with ``arguments``: the job's overrides of the
    keys given several values (``a,b``, ``range``, ``choice``, ``glob``, ``interval``), sorted as Hydra sorts
    ``override_dirname``, then ``shortened`` to ``limit`` characters.

    Constant overrides stay out of it (the job's ``.hydra/overrides.yaml`` records them). Every override is named
    where the swept keys are unknown: ``arguments`` is None, or holds other keys than the job's (a
    ``multirun.yaml`` left by another command in the same folder).
    """
    parser = OverridesParser.create()
    named = parser.parse_overrides(overrides)
    if arguments is not None:
        sweep = parser.parse_overrides(arguments)
        if {override_key(o) for o in sweep} == {override_key(o) for o in named}:
            swept = {override_key(o) for o in sweep if o.is_sweep_override()}
            named = [o for o in named if override_key(o) in swept]
    return shortened(sorted(o.input_line for o in named), limit)


def override_key(override) -> str:
    """The key a parsed Hydra ``override`` sets, without its ``+``/``++``/``~`` (a job's ``+a=1`` sets ``a``)."""
    return override.get_key_element().lstrip("+~")


def shortened(lines: List[str], limit: int) -> str:
    """``lines`` (``key=value`` overrides) as one directory name of at most ``limit`` characters: whole where they
    fit; else keys cut to their last dotted part (``optim.lr=`` to ``lr=``), then values cut to one common width
    as far as needed, and a hash of the whole added, which keeps shortened names distinct."""
    whole = ",".join(lines)
    if len(whole) <= limit:
        return whole.replace("/", "_")  # a path's slashes would nest folders
    parts = [line.partition("=") for line in lines]
    keys = [key.lstrip("+~").rpartition(".")[2] + sep for key, sep, _ in parts]
    values = [value.replace("/", "_") for _, _, value in parts]
    budget = limit - 9  # "~" and 8 hex digits
    widest_first = (",".join(k + cut(v, width) for k, v in zip(keys, values))
                    for width in range(max(map(len, values)), 0, -1))
    name = next((name for name in widest_first if len(name) <= budget), None)
    if name is None:  # too many keys for even one character of each value
        name = ",".join(keys)[:budget]
    return f"{name}~{digest(whole)}"


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def cut(value: str, width: int) -> str:
    """``value`` in at most ``width`` characters: a number rounded to fewer significant digits (an Optuna
    trial's 0.0012345678901 to 0.0012), other text cut at the end."""
    if len(value) <= width:
        return value
    if NUMBER.fullmatch(value):
        rounded = (f"{float(value):.{digits}g}" for digits in range(len(value), 0, -1))
        fitting = next((number for number in rounded if len(number) <= width), None)
        if fitting is not None:
            return fitting
    return value[:width]
