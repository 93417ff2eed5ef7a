"""How a schema is declared: each field's default, its ``metarun --help`` line and its rule (``choice``,
``positive``), and the config group option a schema types (``@schema``).

The help line and the rule live in the field's metadata, where ``metarun --help`` (``help.py``) and the checks
(``validate.py``) read them; a subclass that redefines a field with a plain default keeps both.
"""

from dataclasses import Field, field
from functools import partial
from typing import Any, Callable, Dict, Optional

from omegaconf import MISSING

_FIRST = object()
# {group: {option: schema}}: what the ConfigStore holds as /schema/<group>/<option>, filled as the schema modules
# load (store.py imports them all)
SCHEMAS: Dict[str, Dict[str, type]] = {}


def schema(group: str, option: str) -> Callable[[type], type]:
    """Class decorator: the dataclass types ``conf/<group>/<option>.yaml``
    (``defaults: [/schema/<group>/<option>@_here_]``)."""
    def registered(cls: type) -> type:
        SCHEMAS.setdefault(group, {})[option] = cls
        return cls
    return registered


def setting(default: Any = MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None) -> Field:
    """A field with its help line; a list default is copied for each instance, ``factory`` builds a section."""
    if factory is None and isinstance(default, list):
        factory = partial(list, default)
    if factory is not None:
        return field(default_factory=factory, metadata=_described({}, help))
    return field(default=default, metadata=_described({}, help))


def choice(*allowed: Any, default: Any = _FIRST, help: str = "") -> Field:
    """A field whose value must be one of ``allowed``; its default is the first unless ``default`` says otherwise."""
    return field(default=allowed[0] if default is _FIRST else default,
                 metadata=_described({"choices": allowed}, help))


def positive(default: Any = MISSING, help: str = "") -> Field:
    """A number field whose value must be > 0 (null, where the type allows it, is not checked)."""
    return field(default=default, metadata=_described({"positive": True}, help))


def _described(rule: dict, help: str) -> dict:
    return {**rule, "help": help} if help else rule
