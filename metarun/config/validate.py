"""The checks of a composed config against its schemas: keys no schema has, values still missing, values outside
their field's ``choice`` or ``positive`` rule, and combinations a type cannot catch, each refused in one line that
names the key and the fix (with the closest key for a typo)."""

import difflib
from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

# a key an earlier release had: the setting that replaced it
RENAMED = {"within_alphabet": "episodes_within=group (false: episodes_within=split)"}


def check(cfg: DictConfig) -> None:
    """Reject keys no schema has, values still missing, values outside their field's ``choice`` or ``positive``
    range and combinations that type checks cannot catch, naming the key and the fix.

    Raises:
        ValueError: on the first offending key.
    """
    missing = []
    for key, node, schema in walk(cfg):
        known = list(field_rules(schema)) if is_dataclass(schema) else None
        if known is not None and key.rpartition(".")[2] not in known:
            raise ValueError(unknown_key(key, known))
        if node._is_missing():
            missing.append(key)
    if missing:
        raise ValueError(f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no value; set "
                         f"{' '.join(f'{key}=...' for key in missing)} on the command line (metarun --cfg job prints every key)")
    check_fields(cfg)
    threads = cfg.hardware.num_threads
    if threads != "auto" and (type(threads) is not int or threads < 1):  # type(), as true and false are ints too
        raise ValueError(f"hardware.num_threads={threads} is not auto or a positive integer; set "
                         "hardware.num_threads=auto (sized from the model and the free cores) or e.g. 1")
    chunk = cfg.hardware.vmap_chunk
    if chunk not in (None, "auto") and (type(chunk) is not int or chunk < 1):
        raise ValueError(f"hardware.vmap_chunk={chunk} is not null, auto or a positive integer; set "
                         "hardware.vmap_chunk=auto (chunks that fit the memory) or e.g. 4")
    if cfg.hardware.task_parallel == "threads" and str(cfg.hardware.device).startswith("cuda"):
        raise ValueError("hardware.task_parallel=threads spreads tasks over CPU cores; on a GPU use vmap, loop or auto")
    if cfg.hardware.get("cuda_graphs") is True:
        # auto's device and the data's reasons are checked when known (metarun.runner.captured.wanted)
        device = str(cfg.hardware.device).partition(":")[0]
        reason = graphs_refusal(cfg.hardware, None if device == "auto" else device)
        if reason:
            raise ValueError(f"{reason}; {GRAPHS_FIX}")
    for group in ("algo", "dataset"):  # results.json, run names and the trackers name them (your own ones too)
        if not cfg[group].get("name"):
            raise ValueError(f"{group}.name is not set; give the {group} option's YAML a name: line (e.g. name: "
                             f"my_{group}), which results.json and run names show")
    if cfg.mode == "eval" and not cfg.checkpoint:
        raise ValueError("mode=eval needs checkpoint=PATH (a run's checkpoints/best.pt or last.pt)")
    if cfg.mode == "train" and cfg.eval.ensemble:
        raise ValueError(f"eval.ensemble={list(cfg.eval.ensemble)} scores checkpoints together in mode=eval; train "
                         "without it, then run metarun mode=eval checkpoint=A.pt eval.ensemble=[B.pt,C.pt]")


# the fix every refusal of hardware.cuda_graphs=true names
GRAPHS_FIX = "set hardware.cuda_graphs=false (or auto: eager iterations where a capture cannot be made)"


def graphs_refusal(hardware, device_type: Optional[str]) -> Optional[str]:
    """Why a run on ``device_type`` (None: not known yet) cannot capture its training iterations as CUDA graphs
    (``hardware.cuda_graphs``), in one line naming the key, or None (the data's own reasons: ``TaskSource``)."""
    if device_type not in ("cuda", None):
        return f"hardware.cuda_graphs captures CUDA work; this run is on {device_type}"
    if hardware.distributed:
        return "hardware.cuda_graphs does not capture hardware=ddp's gradient all-reduce"
    if hardware.precision == "fp16":
        return "hardware.cuda_graphs does not capture fp16's loss scaling; use hardware.precision=bf16"
    if hardware.compile:
        return "hardware.cuda_graphs and hardware.compile=true both capture the step; choose one"
    return None


def check_fields(node: DictConfig, prefix: str = "") -> None:
    """Apply each schema field's ``choice`` and ``positive`` metadata to its value below ``node`` (keys named with
    ``prefix``); keys without a schema field, and missing values, are left to the caller.

    Raises:
        ValueError: on the first value out of its range.
    """
    for key, child, schema in walk(node, prefix):
        rule = field_rules(schema).get(key.rpartition(".")[2], {})
        if not (rule.get("positive") or rule.get("choices")) or child._is_missing():
            continue
        value = OmegaConf.select(node, key[len(prefix):])
        if rule.get("positive") and value is not None and not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}; set e.g. {key}={_example(value)}")
        allowed = rule.get("choices")
        if allowed and not any(type(value) is type(option) and value == option for option in allowed):
            raise ValueError(f"{key}={written(value)} is not one of {', '.join(written(o) for o in allowed)}")


def validated(node: DictConfig, schema: type, prefix: str) -> Any:
    """``node`` (a config subtree such as ``cfg.algo``) checked against the dataclass ``schema`` and returned as
    its instance: the settings of an algorithm or dataset whose YAML has no registered schema.

    Interpolations resolve where ``node`` sits; ``_target_``, the import path that picked ``schema``, is dropped
    when ``schema`` has no such field.

    Raises:
        ValueError: one line naming ``prefix.<key>``: a key ``schema`` lacks, a value of the wrong type or missing,
            or one outside its field's ``choice`` or ``positive`` range.
    """
    values = OmegaConf.to_container(node, resolve=True)
    if "_target_" not in field_rules(schema):
        values.pop("_target_", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        check_fields(merged, f"{prefix}.")
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        known = list(field_rules(err.object_type)) if is_dataclass(err.object_type) else []
        raise ValueError(unknown_key(f"{prefix}.{err.full_key}", known)) from None
    except MissingMandatoryValue as err:
        key = f"{prefix}.{err.full_key}"
        raise ValueError(f"{key} has no value; set {key}=... on the command line") from None
    except OmegaConfBaseException as err:
        key = f"{prefix}.{err.full_key}".rstrip(".")
        raise ValueError(f"{key}: {str(err.msg).splitlines()[0]} ({schema.__name__})") from None


@lru_cache(maxsize=None)
def field_rules(schema: Any) -> dict:
    """{field name: its metadata (``choice``, ``positive``, ``help``)} of a schema dataclass, in field order; a field
    that a subclass redefines keeps what its base said and the subclass did not. Empty for anything else (a plain
    dict's None)."""
    if not is_dataclass(schema):
        return {}
    rules = {}
    for cls in reversed(schema.__mro__):
        for f in fields(cls) if is_dataclass(cls) else ():
            rules[f.name] = {**rules.get(f.name, {}), **f.metadata}
    return {f.name: rules[f.name] for f in fields(schema)}


def walk(node: DictConfig, prefix: str = ""):
    """Every key below ``node`` as (full key, its node, the schema dataclass of its parent or None), unresolved.

    ``check`` refuses keys a schema lacks, such as a misspelt ``+algo.inner_lrr=0.1`` that Hydra adds without a
    word (the typo would otherwise sit in the config, ignored), and names the values still missing (``???``);
    ``metarun --help`` gives each key its schema field's comment.
    """
    schema = OmegaConf.get_type(node)
    for key in node.keys():
        child = node._get_node(key)
        yield f"{prefix}{key}", child, schema
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from walk(child, f"{prefix}{key}.")


def unknown_key(key: str, known: list) -> str:
    """The line for ``key``, which its schema (with keys ``known``) does not have."""
    parent, _, name = key.rpartition(".")
    if name in RENAMED and RENAMED[name].split("=")[0] in known:
        return f"{key} is now {parent + '.' if parent else ''}{RENAMED[name]}"
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return (f"{key} is not a config key; {hint}{parent or 'the config'} has {', '.join(known)} "
            "(metarun --cfg job prints every key)")


def _example(value: Any) -> str:
    return "1" if isinstance(value, int) else "0.01"


def written(value: Any) -> str:
    """``value`` as the command line writes it: true, not True; [64,160], not [64, 160]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"[{','.join(map(written, value))}]"
    return str(value)
