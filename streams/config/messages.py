"""Pydantic's errors in Herald's words: `what is wrong; how to fix it`, one line each.

The one formatter for every pydantic error a user sees, whether the configuration file, a
handler put at runtime or an action's parameters failed to validate. A message is built from
the error kind, the field's declared type and pydantic's short message, never from
pydantic's full text, which echoes the input value (it may be a secret).
"""

from __future__ import annotations

import re
import types
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from streams.actions import registry as actions
from streams.config.models import CONDUCTOR_BOOKKEEPING

#: A place in the data: section, index, field, ... (`("eventHandlers", 0, "condition")`).
Loc = tuple[str | int, ...]

_TYPE_ERRORS: dict[str, tuple[str, str]] = {
    "string_type": ("text", "write it in quotes"),
    "int_type": ("a whole number", "write a number such as 8"),
    "int_parsing": ("a whole number", "write a number such as 8"),
    "int_from_float": ("a whole number", "drop the fraction"),
    "float_type": ("a number", "write a number such as 2.5"),
    "float_parsing": ("a number", "write a number such as 2.5"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
    "dict_type": ("a mapping", "write 'key: value' lines under it"),
    "model_type": ("a mapping", "write 'key: value' lines under it"),
    "model_attributes_type": ("a mapping", "write 'key: value' lines under it"),
    "list_type": ("a list", "write one '- item' line per entry"),
}
_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("greater than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}
_FIELD_HINTS = {
    "bootstrapServers": "set it to host:port[,host:port]",
    "name": "set it to a unique name",
    "event": "set it to kafka:<integration>:<topic>",
    "to": "set it to kafka:<integration>:<topic>",
    "actions": "add at least one action",
    "integrations": "define at least one Kafka integration (name, bootstrapServers)",
    "url": "set it to the URL",
    "key": "set it to a template such as ${alertKey}",
}


def error_message(
    error: ErrorDetails, model: type[BaseModel] | None, *, show_input: bool = True
) -> str:
    """`what is wrong; how to fix it` for one pydantic error, without its location.

    The input itself is shown only for an unknown choice, and only when `show_input` (not a
    secret, not from the environment). `model` is the model validated, so allowed fields,
    choices and per-field hints can be given; None words a fix without them (an action's
    parameters, documented with the action rather than listed in each message).
    """
    kind = error["type"]
    loc = clean_loc(error["loc"])
    value = error.get("input")
    if kind == "extra_forbidden":
        if model is None:
            return f"unknown field {loc[-1]!r}; remove it or check its spelling"
        allowed = _allowed_fields(model, loc[:-1])
        fix = f"remove it or use one of: {', '.join(allowed)}" if allowed else "remove it"
        return f"unknown field {loc[-1]!r}; {fix}"
    if kind == "missing":
        return f"field required; {_set_hint(model, loc)}"
    if kind in ("literal_error", "enum"):
        choices = _choices(_field_type(model, loc)) or _quoted(
            str(error.get("ctx", {}).get("expected", ""))
        )
        shown = f" {value!r}" if show_input and isinstance(value, str | int) else ""
        return f"unknown value{shown}; use one of: {', '.join(choices)}"
    if kind in _TYPE_ERRORS:
        if value is None:
            return f"is empty; {_set_hint(model, loc)}"
        expected, fix = _TYPE_ERRORS[kind]
        return f"expected {expected}, got {kind_of(value)}; {fix}"
    if kind in ("too_short", "string_too_short"):
        if kind == "string_too_short" or error.get("ctx", {}).get("actual_length") == 0:
            return f"is empty; {_set_hint(model, loc)}"
        return f"{error['msg']}; add more"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        return f"must be {words} {error.get('ctx', {}).get(key)}; change the value"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in ("value_error", "assertion_error"):
        return message  # Herald's own validators already say how to fix it
    return f"{message}; fix the value"


def clean_loc(loc: tuple[Any, ...]) -> Loc:
    """The data path of an error, without pydantic's internal steps (`function-after[...]`)."""
    return tuple(
        part for part in loc if isinstance(part, int) or ("[" not in part and "(" not in part)
    )


def _set_hint(model: type[BaseModel] | None, loc: Loc) -> str:
    if model is None:
        return "set it"
    name = loc[-1] if loc else None
    if isinstance(name, str) and name in _FIELD_HINTS:
        return _FIELD_HINTS[name]
    if name == "action":
        return f"set it to one of: {', '.join(actions.names())}"
    choices = _choices(_field_type(model, loc))
    return f"set it to one of: {', '.join(choices)}" if choices else "set it"


def _field_type(model: type[BaseModel] | None, loc: Loc) -> Any:
    """The declared type at `loc`, following fields, list items and dict values; None if the
    path leaves the declared schema (e.g. inside an action's free-form parameters)."""
    current: Any = model
    for part in loc:
        current = _unwrap_optional(current)
        origin, args = get_origin(current), get_args(current)
        if isinstance(part, int) and origin in (list, tuple, set) and args:
            current = args[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    return _unwrap_optional(current)


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    owner = _field_type(model, loc)
    if not (isinstance(owner, type) and issubclass(owner, BaseModel)):
        return []
    return [name for name in owner.model_fields if name not in CONDUCTOR_BOOKKEEPING]


def _choices(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(arg) for arg in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return []


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def kind_of(value: Any) -> str:
    """What a value is, in YAML words, without showing it."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
