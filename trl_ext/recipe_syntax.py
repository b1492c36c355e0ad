"""TRL's own syntax, as users copy it from TRL's docs and alignment-handbook, turned into this recipe schema's keys and
values: command-line overrides (``--no_<flag>``, ``--key a b`` for list keys, values typed like YAML), keys TRL or
transformers renamed (named in "did you mean"), and transformers 5's ``activation_checkpointing`` for TRL's
``gradient_checkpointing``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from trl_ext.recipe_validation import RecipeError, ValueRangeError, check_value


def split_cli(overrides: list[str]) -> list[tuple[str, str | list[str] | None]]:
    """``["--lr", "1", "--flag", "--x=2", "--m", "a", "b"]`` -> ``[("lr", "1"), ("flag", None), ("x", "2"),
    ("m", ["a", "b"])]``: TRL's command-line syntax, where a list key takes its values one after another."""
    out, i = [], 0
    while i < len(overrides):
        tok = overrides[i]
        if not tok.startswith("--") or tok == "--":
            raise RecipeError(f"Unexpected command-line argument {tok!r}; overrides look like --key value.")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            out.append((key, val))
            i += 1
            continue
        values = []
        i += 1
        while i < len(overrides) and not is_flag(overrides[i]):
            values.append(overrides[i])
            i += 1
        out.append((key, None if not values else values[0] if len(values) == 1 else values))
    return out


def is_flag(token: str) -> bool:
    """``--key`` starts an override; ``-1`` or ``-1e-5`` is a (negative) value."""
    return token.startswith("--") and len(token) > 2 and not token[2].isdigit()


def prefer_activation_checkpointing(config: dict[str, Any], fields: dict) -> None:
    """Set transformers 5's ``activation_checkpointing`` from TRL's ``gradient_checkpointing`` (whose default TRL
    changes to true), so ``TrainingArguments`` never warns that the old key is deprecated: the value is the same,
    and the old key keeps mirroring the new one."""
    if "activation_checkpointing" not in fields or config.get("activation_checkpointing") is not None:
        return
    value = config.get("gradient_checkpointing", fields["gradient_checkpointing"][0].default)
    if value is not None and not isinstance(value, dataclasses._MISSING_TYPE):
        config["activation_checkpointing"] = value
        config.pop("gradient_checkpointing", None)
    if "gradient_checkpointing_kwargs" in config and config.get("activation_checkpointing_kwargs") is None:
        config["activation_checkpointing_kwargs"] = config.pop("gradient_checkpointing_kwargs")


# ---------------------------------------------------------------------------------------------------------------
# renamed keys and command-line values
# ---------------------------------------------------------------------------------------------------------------

#: Keys users copy from older TRL/transformers configs or alignment-handbook recipes -> the key that replaced them
#: (with what changed, where more than the name did).
RENAMED_KEYS: dict[str, tuple[str, str]] = {
    "torch_dtype": ("dtype", ""),
    "dataset_mixture": ("datasets", " (TRL's mixture: a list of {path: ..., split: ...} mappings)"),
    "dataset_mixer": ("datasets", " (TRL's mixture: a list of {path: ..., split: ...} mappings)"),
    "max_seq_length": ("max_length", ""),
    "max_prompt_length": ("max_length", " (TRL 1.x truncates the prompt and completion together)"),
    "warmup_ratio": ("warmup_steps", " (transformers 5 merged them: a value below 1 is a fraction of the steps)"),
    "evaluation_strategy": ("eval_strategy", ""),
    "no_cuda": ("use_cpu", ""),
}


def renamed_key_hint(key: str, valid) -> str | None:
    """The "renamed" hint for an unknown ``key`` whose replacement is among ``valid``, or None."""
    new, note = RENAMED_KEYS.get(key, (None, ""))
    if new is None or new not in valid:
        return None
    return f" It was renamed: use {new!r}{note}."


def _non_none(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args
    return [tp]


def is_bool_field(tp) -> bool:
    """Whether a field annotation is ``bool`` or ``bool | None``."""
    return _non_none(tp) == [bool]


def is_list_field(tp) -> bool:
    """Whether a field annotation admits a list (``list[str]``, ``list[str] | None``, ``str | list[str]``)."""
    return any(typing.get_origin(a) in (list, tuple) or a in (list, tuple) for a in _non_none(tp))


def coerce_cli_value(key: str, value, spec: tuple[dataclasses.Field, Any], method: str):
    """A command-line override's value (a string, a list of strings for ``--key a b``, or None for ``--key``),
    converted to its field's type as `check_value` does for YAML values.

    A string is first tried as written, then read as YAML (``5`` -> int, ``[a, b]`` -> list, ``{...}`` -> mapping),
    so ``--max_steps 5`` and ``--output_dir 123`` both mean what they say.

    Args:
        key (`str`):
            The recipe key (without ``--``).
        value (`str`, `list[str]` or `None`):
            What followed ``--key`` on the command line.
        spec (`tuple[dataclasses.Field, Any]`):
            The field and its type annotation.
        method (`str`):
            The recipe's method, named in errors.

    Returns:
        The converted value.

    Raises:
        RecipeError: naming the flag, the value and what the key expects.
    """
    import yaml

    _, tp = spec
    if value is None:
        if is_bool_field(tp):
            return True
        raise RecipeError(f"--{key} needs a value: --{key} VALUE.")
    if isinstance(value, list):
        if not is_list_field(tp):
            raise RecipeError(f"--{key} takes one value, got {len(value)}: {' '.join(value)}.")
        return [coerce_cli_value(key, v, (spec[0], _list_item_type(tp)), method) for v in value]
    try:
        return check_value(key, value, spec, method)
    except ValueRangeError:
        raise
    except RecipeError as first:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        if parsed is None or isinstance(parsed, str):
            raise RecipeError(f"--{key} {value}: {_tail(first)}") from None
    return check_value(key, parsed, spec, method)


def _list_item_type(tp):
    for arg in _non_none(tp):
        if typing.get_origin(arg) in (list, tuple):
            args = typing.get_args(arg)
            return args[0] if args else Any
    return Any


def _tail(err: RecipeError) -> str:
    """``"Recipe key 'x' has value 'y', but dpo expects float."`` -> ``"dpo expects float."``."""
    text = str(err)
    return text.split(", but ", 1)[1] if ", but " in text else text
