"""Checks of single recipe values against the type annotations of TRL's config fields, and the recipe error type.

`check_value` accepts a value when it converts losslessly to the field's annotation (``1e-5`` written without a dot,
which YAML reads as a string, is accepted for float keys) and otherwise raises a `RecipeError` that names the key and
what is allowed, before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any


class RecipeError(ValueError):
    """A recipe problem found before any weight is loaded. The message says what is wrong and how to fix it."""


class _Mismatch(Exception):
    pass


class ValueRangeError(RecipeError):
    """A value of the right type outside its key's range (`VALUE_RANGES`)."""


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
        if isinstance(value, str):  # TRL's own configs take one string for a list (`loss_type: sigmoid`)
            value = [value]
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
        RecipeError: the value does not fit the field's type, is not among the field's ``choices`` or lies outside
            its range in `VALUE_RANGES`.
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
    check_range(key, coerced)
    return coerced


# ---------------------------------------------------------------------------------------------------------------
# value ranges
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric recipe key allows: ``low``/``high`` bounds (None: unbounded), each open or closed.

    Args:
        low (`float`, *optional*):
            Lower bound.
        high (`float`, *optional*):
            Upper bound.
        low_open (`bool`, *optional*, defaults to `False`):
            Whether ``low`` itself is excluded.
        high_open (`bool`, *optional*, defaults to `False`):
            Whether ``high`` itself is excluded.
        also (`tuple`, *optional*):
            Values allowed outside the bounds (``max_steps: -1``).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def __contains__(self, value) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = " and ".join(parts)
        return text + "".join(f" (or {v:g})" for v in self.also)


_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_AT_LEAST_ONE = Range(1)
_UNIT = Range(0, 1)

#: The value range of every numeric key that has one (the key is checked where the method has it). One table, so
#: a new constraint is one line.
VALUE_RANGES: dict[str, Range] = {
    # LoRA / model
    "lora_r": _AT_LEAST_ONE,
    "lora_alpha": _POSITIVE,
    "lora_dropout": Range(0, 1, high_open=True),
    # optimisation
    "learning_rate": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "max_grad_norm": _NON_NEGATIVE,
    "warmup_steps": _NON_NEGATIVE,
    "adam_beta1": Range(0, 1, high_open=True),
    "adam_beta2": Range(0, 1, high_open=True),
    "adam_epsilon": _NON_NEGATIVE,
    "num_train_epochs": _NON_NEGATIVE,
    "max_steps": Range(1, also=(-1,)),
    "per_device_train_batch_size": _AT_LEAST_ONE,
    "per_device_eval_batch_size": _AT_LEAST_ONE,
    "gradient_accumulation_steps": _AT_LEAST_ONE,
    "logging_steps": _POSITIVE,
    "save_steps": _POSITIVE,
    "eval_steps": _POSITIVE,
    "save_total_limit": _AT_LEAST_ONE,
    "seed": _NON_NEGATIVE,
    "dataloader_num_workers": _NON_NEGATIVE,
    # lengths and generation
    "max_length": _AT_LEAST_ONE,
    "max_completion_length": _AT_LEAST_ONE,
    "num_generations": _AT_LEAST_ONE,
    "generation_batch_size": _AT_LEAST_ONE,
    "steps_per_generation": _AT_LEAST_ONE,
    "num_iterations": _AT_LEAST_ONE,
    "temperature": _POSITIVE,
    "top_p": Range(0, 1, low_open=True),
    "top_k": _NON_NEGATIVE,
    # preference and RL losses
    "beta": _NON_NEGATIVE,
    "label_smoothing": Range(0, 0.5),
    "epsilon": _POSITIVE,
    "desirable_weight": _POSITIVE,
    "undesirable_weight": _POSITIVE,
    "kl_coef": _NON_NEGATIVE,
    "gamma": _UNIT,
    "lam": _UNIT,
    "vf_coef": _NON_NEGATIVE,
    "cliprange_value": _POSITIVE,
    "num_ppo_epochs": _AT_LEAST_ONE,
    "num_mini_batches": _AT_LEAST_ONE,
    # EWC and the forgetting monitor
    "ewc_lambda": _NON_NEGATIVE,
    "ewc_gamma": _UNIT,
    "ewc_fisher_samples": _AT_LEAST_ONE,
    "ewc_fisher_max_length": _AT_LEAST_ONE,
    "ewc_fisher_batch_size": _AT_LEAST_ONE,
    "forgetting_eval_steps": _AT_LEAST_ONE,
    "forgetting_eval_samples": _AT_LEAST_ONE,
    "forgetting_max_length": _AT_LEAST_ONE,
}


def check_range(key: str, value) -> None:
    """Raise a `RecipeError` when a numeric ``value`` of ``key`` lies outside `VALUE_RANGES` (NaN included).

    Args:
        key (`str`):
            The recipe key.
        value:
            Its (type-checked) value; None and non-numbers are left to the type check.
    """
    allowed = VALUE_RANGES.get(key)
    if allowed is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value != value or value not in allowed:  # value != value: NaN
        raise ValueRangeError(f"Recipe key {key!r} has value {value!r}, but it must be {allowed.describe()}.")


#: ``report_to`` integration -> the extra (or package) that provides it, where trl-ext offers one.
REPORT_TO_EXTRAS = {"tensorboard": "trl-ext[tensorboard]"}


def check_report_to(report_to, source: str) -> None:
    """Refuse (`RecipeError`) a ``report_to`` integration transformers does not know, or whose package is missing.

    Args:
        report_to (`str` or `list[str]`):
            The recipe's ``report_to``.
        source (`str`):
            Where the recipe came from, named in the error.
    """
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(name, list(INTEGRATION_TO_CALLBACK), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(
                f"report_to {name!r} in {source} is not an integration transformers knows.{hint} "
                f"Choose among none, all, {', '.join(sorted(INTEGRATION_TO_CALLBACK))}."
            )
        if name not in get_available_reporting_integrations():
            extra = REPORT_TO_EXTRAS.get(name, name)
            raise RecipeError(
                f"report_to {name!r} in {source} needs the {name} package, which is not installed: "
                f"pip install '{extra}', or set report_to: none."
            )
