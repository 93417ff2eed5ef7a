"""The text of ``metarun --help``: every config group with its options, Hydra's sweeper and launcher groups,
and every key of the composed config with its value and meaning.

A key's meaning is the help line of its field in the schema dataclass that types it (``setting``, ``choice``
and ``positive`` in fields.py), so the help and the schemas cannot drift apart. Hydra calls the ``metarun_help``
resolver from ``hydra.help.template`` (conf/config.yaml) while it prints the help of the composed config.
"""

import json
from importlib import resources

from omegaconf import DictConfig, ListConfig, OmegaConf

from metarun.config.validate import field_rules, walk

# the groups a user picks options from, in the order of conf/config.yaml's defaults, then Hydra's own
GROUPS = ("algo", "dataset", "model", "hardware", "logger", "paths", "experiment", "debug", "hydra/sweeper",
          "hydra/launcher")
HYDRA_BUILT_IN = {"hydra/sweeper": ["basic"], "hydra/launcher": ["basic"]}


def help_section(part: str, *, _root_: DictConfig) -> str:
    """``groups`` or ``keys`` for the help of the composed config ``_root_`` (``$`` doubled for Hydra's template)."""
    text = groups_text() if part == "groups" else keys_text(_root_)
    return text.replace("$", "$$")


def groups_text() -> str:
    """One line per group: ``group: option, option, ...``."""
    conf = resources.files("metarun.conf")
    lines = []
    for group in GROUPS:
        folder = conf.joinpath(group)
        options = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
        lines.append(f"{group}: {', '.join(sorted(options + HYDRA_BUILT_IN.get(group, [])))}")
    return "\n".join(lines)


def keys_text(root: DictConfig) -> str:
    """``key = value  # meaning`` for every key of ``root`` but Hydra's own, the top level's plain keys first."""
    leaves = [(key, node, schema) for key, node, schema in walk(root)
              if not isinstance(node, DictConfig) and not key.startswith("hydra.")]
    lines = []
    for key, node, schema in sorted(leaves, key=lambda leaf: "." in leaf[0]):
        line = f"{key} = {written(node)}"
        rule = field_rules(schema).get(key.rpartition(".")[2], {})
        meaning, choices = rule.get("help", ""), rule.get("choices")
        if choices:  # the schema's one list of them
            options = " | ".join(json.dumps(o) if isinstance(o, bool) else str(o) for o in choices)
            meaning = f"{options}: {meaning}" if meaning else options
        lines.append(f"{line:<44} # {meaning}" if meaning else line)
    return "\n".join(lines)


def written(node) -> str:
    """A leaf as the command line would write it (interpolations unresolved)."""
    value = OmegaConf.to_container(node, resolve=False) if isinstance(node, ListConfig) else node._value()
    return json.dumps(value) if isinstance(value, (bool, type(None), list)) else str(value)
