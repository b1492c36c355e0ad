"""Checks of single recipe values against the type annotations of TRL's config fields, and the recipe error type.

`check_value` accepts a value when it converts losslessly to the field's annotation (``1e-5`` written without a dot,
which YAML reads as a string, is accepted for float keys) and otherwise raises a `RecipeError` that names the key and
what is allowed, before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any


class RecipeError(ValueError):
    """A recipe problem found before any weight is loaded. The message says what is wrong and how to fix it."""


class _Mismatch(Exception):
    pass


def describe_type(annotation) -> str:
    """What a type annotation allows, in words for an error message.

    Args:
        annotation:
            A field's type annotation, such as ``float``, ``list[str]`` or ``SchedulerType | str``.

    Returns:
        `str`: e.g. ``"float"``, ``"a list of str"``, ``"one of 'linear', 'cosine', ..."``.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and str in args:
            return describe_type(enums[0])
        return " or ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"a list of {describe_type(args[0])}" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    if dataclasses.is_dataclass(annotation):
        return "a mapping with keys among " + ", ".join(f.name for f in dataclasses.fields(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value, tp):
    """Return ``value`` converted to ``tp`` where the conversion is lossless, else raise `_Mismatch`."""
    if tp is Any or tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and str in args and isinstance(value, str):
            # `SchedulerType | str` style: the str alternative only admits the enum's values written as strings
            return _coerce(value, enums[0])
        for arg in args:
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        if value in values:
            return value
        if isinstance(value, tp):
            return value.value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads `1e-5` (no dot) as a string
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        # a nested config written as a mapping (TRL's `datasets:` entries); TRL builds the dataclass from it
        if isinstance(value, tp):
            return value
        names = {f.name for f in dataclasses.fields(tp)}
        if isinstance(value, dict) and set(value) <= names:
            return value
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation we do not model: let TRL's own checks decide


def check_value(key: str, value, spec: tuple[dataclasses.Field, Any], method: str):
    """``value`` converted to the type of the field it sets, or a `RecipeError` naming the key and what is allowed.

    Args:
        key (`str`):
            The recipe key.
        value:
            Its value as written (YAML or command line).
        spec (`tuple[dataclasses.Field, Any]`):
            The field and its type annotation (an entry of `trl_ext.recipe.recipe_fields`).
        method (`str`):
            The recipe's method, named in the error.

    Returns:
        The converted value (``"1e-5"`` becomes ``1e-05`` for a float key, ``"yes"`` becomes ``True``).

    Raises:
        RecipeError: the value does not fit the field's type or is not among the field's ``choices``.
    """
    f, tp = spec
    try:
        coerced = _coerce(value, tp)
    except _Mismatch:
        raise RecipeError(
            f"Recipe key {key!r} has value {value!r}, but {method} expects {describe_type(tp)}."
        ) from None
    choices = f.metadata.get("choices")
    if choices:
        items = coerced if isinstance(coerced, list) else [coerced]
        bad = [v for v in items if v is not None and v not in choices]
        if bad:
            raise RecipeError(
                f"Recipe key {key!r} has value {bad[0]!r}; allowed values: {', '.join(map(str, choices))}."
            )
    return coerced
