"""Type checks of dataclass fields read from files (``fuser_config.json``, YAML): a wrong type is an error
that names the field and the expected type, never a TypeError from deep inside a model build."""

from __future__ import annotations

import dataclasses
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

__all__ = ["check_field_types", "matches", "type_name"]


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (int, float, bool, str, Literal, list, dict, optional)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, UnionType):
        return any(matches(value, a) for a in get_args(hint))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if origin in (list, tuple):
        args = get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if origin is dict:
        args = get_args(hint)
        return isinstance(value, dict) and (
            not args or all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
        )
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    """A readable name of an annotation: ``int``, ``int | None``, ``Literal['a', 'b']``, ``dict[int, int]``."""
    return hint.__name__ if isinstance(hint, type) and not get_args(hint) else str(hint).replace("typing.", "")


def check_field_types(obj: Any, source: str) -> None:
    """Raise a TypeError naming the first field of dataclass ``obj`` whose value does not fit its annotation."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not matches(value, hints[f.name]):
            expected = type_name(hints[f.name])
            raise TypeError(f"{source}: field {f.name!r} = {value!r} has the wrong type; expected {expected}")
