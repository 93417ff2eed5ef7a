"""mkdocs hook: each line ``<!-- schema KEY -->`` of a page becomes the table of that config's keys, generated from
the schema dataclasses in metarun/config/, so the pages cannot drift from the code.

A row gives the key, its type, its default and its meaning: the schema field's help line, as ``metarun --help``
shows it, after the values its ``choice`` allows or its ``positive`` range.
KEY is a group option, ``algo/fomaml`` (the option's YAML merged onto the schema it names, so the defaults are the
option's: ``first_order`` true), or a part of the run config: ``train``, ``optim``, ``eval``, ``hardware``,
``logger``, ``paths``, or ``run`` for the top-level keys. mkdocs.yml names this file under ``hooks:``.
"""

import re
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's metarun, installed or not

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from metarun.config.fields import SCHEMAS  # noqa: E402
from metarun.config.run import Config  # noqa: E402
from metarun.config.validate import field_rules, written  # noqa: E402

MARKER = re.compile(r"^<!-- schema ([\w/]+) -->$", re.M)


def on_page_markdown(markdown: str, **_) -> str:
    """The page with each marker replaced by its table (mkdocs calls this for every page)."""
    return MARKER.sub(lambda match: schema_table(match.group(1)), markdown)


def schema_table(key: str) -> str:
    """The markdown table of ``key``'s config (see the module docstring)."""
    schema, node, prefix = resolve(key)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {kind} | {default} | {meaning} |"
             for name, kind, default, meaning in leaves(schema, node, prefix)]
    return "\n".join(rows)


def resolve(key: str) -> tuple:
    """(schema dataclass, its config node with the option's values, the key prefix) for a marker's ``key``."""
    if "/" in key:
        group, option = key.split("/")
        yaml = OmegaConf.load(REPO / "conf" / group / f"{option}.yaml")
        (base,) = [d.split("/")[3].split("@")[0] for d in yaml.pop("defaults") if str(d).startswith("/schema/")]
        schema = SCHEMAS[group][base]
        return schema, OmegaConf.merge(OmegaConf.structured(schema), yaml), f"{group}."
    if key == "run":
        return Config, OmegaConf.structured(Config), ""
    schema = next(f.default_factory for f in fields(Config) if f.name == key)
    return schema, OmegaConf.structured(schema), f"{key}."


def leaves(schema: type, node: DictConfig, prefix: str):
    """(key, type, default, meaning) of every field below ``schema``, a nested schema's fields with their dotted
    keys."""
    rules = field_rules(schema)
    for field in fields(schema):
        child = node._get_node(field.name)
        if schema is Config and (is_dataclass(field.type) or field.name in ("algo", "dataset", "model")):
            continue  # the run config's parts and groups have tables of their own
        if is_dataclass(field.type):
            yield from leaves(field.type, child, f"{prefix}{field.name}.")
            continue
        rule = rules.get(field.name, {})
        meaning = rule.get("help", "")
        if rule.get("choices"):
            allowed = ", ".join(f"`{written(choice)}`" for choice in rule["choices"])
            meaning = f"one of {allowed}: {meaning}" if meaning else f"one of {allowed}"
        elif rule.get("positive"):
            meaning = f"> 0. {meaning}" if meaning else "> 0"
        yield f"{prefix}{field.name}", type_name(field.type), default(child), cell(meaning)


def type_name(kind) -> str:
    """``float``, ``int or null``, ``list of float``: a field's annotation as a reader says it."""
    if kind is typing.Any:
        return "any"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union and type(None) in args:
        return f"{type_name(next(a for a in args if a is not type(None)))} or null"
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}"
    return getattr(kind, "__name__", str(kind))


def default(node) -> str:
    """The default as the command line writes it, interpolations unresolved; ``required`` where there is none."""
    if node._is_missing():
        return "required"
    if node._is_none():
        return "`null`"
    value = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_list(node) else node._value()
    return f"`{written(value)}`".replace("|", "\\|")


def cell(text: str) -> str:
    """``text`` safe inside a table cell: pipes escaped, ``<`` written as an entity (``<run dir>`` is no HTML tag)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")
