"""Recipe YAML -> typed TRL configs, validated before any weight is loaded.

A recipe is a flat YAML mapping in TRL's own config convention: its keys are the fields of TRL's script/dataset
arguments (`trl.ScriptArguments`, `trl.DatasetMixtureConfig`), `trl.ModelConfig` and the method's config class
(``DPOConfig``, ``GRPOConfig``, ``KTOConfig``, ``PPOConfig``), plus ``method:`` and the fields of `RecipeArguments`.
Anything TRL accepts works unchanged; CLI flags (``--key value``) override the YAML.

Validation happens in `load_recipe`, before anything heavy:

- an unknown key fails with the key, the method and the closest valid key (or the method the key belongs to);
- a wrong type or value fails with the key and what is allowed (``1e-5`` written without a dot, which YAML reads
  as a string, is accepted for float keys);
- `trl_ext.data.load_datasets` then checks the columns the method needs and names the missing one and the dataset.

`load_recipe` sets no environment variable and keeps bf16/fp16 as written: the recipe's ``env:`` and the CPU fallback
for bf16/fp16 are applied by `trl_ext.runtime.apply_runtime` where a run starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Deprecated here: import the loading API from trl_ext.data (kept for one release).
from trl_ext.data.loading import load_dataset_by_name, load_datasets, select_split  # noqa: F401
from trl_ext.recipe_syntax import (
    coerce_cli_value,
    is_bool_field,
    prefer_activation_checkpointing,
    renamed_key_hint,
    split_cli,
)
from trl_ext.recipe_validation import RecipeError, check_report_to, check_value

#: method -> its config class in `trl_ext.configs` (the trainers are looked up by the entry points, `trl_ext.train`)
METHODS: dict[str, str] = {
    "dpo": "DPOConfig",
    "grpo": "GRPOConfig",
    "kto": "KTOConfig",
    "ppo": "PPOConfig",
    "sft": "SFTConfig",
    "reward": "RewardConfig",
}

from trl_ext.recipe_arguments import RecipeArguments  # noqa: E402,F401  (the script-level keys; re-exported)

#: Keys TRL's parser handles itself rather than through a dataclass field.
PARSER_KEYS = {"env"}


@dataclass
class Recipe:
    """A parsed, validated recipe.

    Args:
        method (`str`):
            ``dpo``, ``grpo``, ``kto`` or ``ppo``.
        path (`str` or `None`):
            The recipe file, or None for a recipe given on the command line only.
        script (`RecipeArguments`):
            Script-level keys.
        training:
            The method's config (a ``TrainingArguments`` subclass such as ``DPOConfig``).
        model (`trl.ModelConfig`):
            Model, quantization and LoRA keys.
        datasets (`trl.DatasetMixtureConfig`):
            TRL's dataset mixture (``datasets:``).
        raw (`dict`):
            The recipe file's mapping as read.
        overrides (`list[str]`):
            The ``--key value`` command-line overrides.
        env (`dict[str, str]`):
            The recipe's ``env:`` variables, exported by `trl_ext.runtime.apply_runtime`.
        runtime_applied (`bool`):
            Whether `trl_ext.runtime.apply_runtime` built this recipe (its effects are then in place).
    """

    method: str
    path: str | None
    script: RecipeArguments
    training: Any
    model: Any
    datasets: Any
    raw: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    runtime_applied: bool = False

    @property
    def override_keys(self) -> set[str]:
        """The keys set on the command line (they win over the file and over runtime settings)."""
        keys = {key for key, _ in split_cli(self.overrides)}
        return keys | {key[3:] for key in keys if key.startswith("no_")}


def method_config_class(method: str):
    """The config class of `method` (`DPOConfig`, `GRPOConfig`, `KTOConfig` or `PPOConfig`)."""
    import trl_ext.configs

    return getattr(trl_ext.configs, METHODS[method])


def dataclass_types(method: str) -> tuple[type, ...]:
    """The dataclasses a recipe for ``method`` fills, in parsing order: script, method config, model, mixture."""
    from trl import DatasetMixtureConfig, ModelConfig

    return (RecipeArguments, method_config_class(method), ModelConfig, DatasetMixtureConfig)


def recipe_fields(method: str) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Every key a recipe for ``method`` may hold, mapped to ``(field, type annotation)``.

    The annotation comes from ``typing.get_type_hints`` of the owning class, not from ``Field.type``: transformers'
    argument parser rewrites ``Field.type`` in place (``dict | str | None`` becomes ``str``) when it builds a parser.
    """
    fields: dict[str, tuple[dataclasses.Field, Any]] = {}
    for cls in dataclass_types(method):
        hints = _type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in fields:
                fields[f.name] = (f, hints.get(f.name, Any))
    return fields


@functools.cache
def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key_error(key: str, method: str, valid: list[str], source: str) -> RecipeError:
    other = [m for m in METHODS if m != method and key in _safe_fields(m)]
    hint = renamed_key_hint(key, valid)
    if hint:
        pass
    elif other:
        hint = f" It is a key of method {other[0]!r}, not of {method!r}."
    else:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    return RecipeError(f"Unknown key {key!r} in {source} for method {method!r}.{hint}")


def _safe_fields(method: str) -> dict:
    try:
        return recipe_fields(method)
    except ImportError:  # a method whose trainer module is not importable here
        return {}


# ---------------------------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------------------------


def _cli_config(cli: list[tuple[str, Any]], fields: dict, method: str, valid: list[str]) -> dict[str, Any]:
    """The command-line overrides as validated ``{key: value}``, TRL's syntax included: ``--no_<flag>`` sets a
    boolean key false, ``--key a b`` gives a list key several values."""
    config: dict[str, Any] = {}
    for key, value in cli:
        if key == "config":
            continue
        if (
            key not in fields
            and key.startswith("no_")
            and value is None
            and is_bool_field(fields.get(key[3:], (0, 0))[1])
        ):
            config[key[3:]] = False
            continue
        if key not in fields:
            raise _unknown_key_error(key, method, valid, "the command-line overrides")
        config[key] = coerce_cli_value(key, value, fields[key], method)
    return config


def read_recipe_mapping(path) -> dict:
    """The YAML mapping of a recipe file (RecipeError when it is missing, not YAML, or not a mapping)."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise RecipeError(f"Recipe file {path} does not exist.") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"Recipe {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping of key: value, got {type(raw).__name__}.")
    return raw


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Recipe:
    """Parse and validate a recipe file plus ``--key value`` overrides (which win over the file).

    Loads no weights and no data, sets no environment variable and keeps bf16/fp16 as written: apply the recipe to
    the process with `trl_ext.runtime.apply_runtime` where a run starts.

    Args:
        path (`str` or `os.PathLike`, *optional*):
            The recipe YAML; None for a recipe given entirely by ``overrides``.
        overrides (`list[str]`, *optional*):
            Command-line overrides: ``["--learning_rate", "1e-5", "--beta=0.2"]``.

    Returns:
        `Recipe`: the method's TRL configs, built from the file and the overrides.

    Raises:
        RecipeError: naming the key and the fix.
    """
    raw = read_recipe_mapping(path) if path is not None else {}
    return build_recipe(raw, overrides, path=str(path) if path is not None else None)


def build_recipe(
    raw: dict,
    overrides: list[str] | None = None,
    path: str | None = None,
    settings: dict[str, Any] | None = None,
    deferred: dict[str, Any] | None = None,
) -> Recipe:
    """Validate a recipe mapping plus ``--key value`` overrides and build the method's TRL configs.

    Without CUDA, the configs are built with ``use_cpu: true`` unless the command line sets it: transformers refuses
    bf16 without a GPU otherwise, and the accelerate process state it creates while building them must be the CPU one
    (which is also what lets ``accelerate launch --multi_gpu`` form a gloo process group there).

    Args:
        raw (`dict`):
            The recipe mapping, as read from YAML.
        overrides (`list[str]`, *optional*):
            Command-line overrides, which win over ``raw`` and ``settings``.
        path (`str`, *optional*):
            The file ``raw`` was read from, named in errors.
        settings (`dict`, *optional*):
            Values that replace those of ``raw`` (how `trl_ext.runtime.apply_runtime` turns bf16 off on CPU).
        deferred (`dict`, *optional*):
            Keys whose values do not exist yet (a pipeline stage's reference to an earlier stage's output): checked to
            be keys of the method, set on the configs after they are built (so their own file checks run only when
            the stage loads its recipe), and counted by the checks across keys (PPO's reward).

    Returns:
        `Recipe`: the validated recipe.

    Raises:
        RecipeError: naming the key and the fix.
    """
    from trl import TrlParser

    overrides = list(overrides or [])
    source = f"recipe {path}" if path is not None else "the command line"
    cli = split_cli(overrides)
    method = next((v for k, v in cli if k == "method"), None) or raw.get("method")
    if "stages" in raw:
        raise RecipeError(
            f"{source} is a pipeline (it has stages:); run it with `trl-ext train {path}` (add --stage NAME to run "
            "one stage), or run a stage's own recipe, <output_dir>/<stage>/stage_recipe.yaml."
        )
    if method is None:
        raise RecipeError(f"{source} has no 'method' key; add `method: dpo` (or grpo, kto, ppo).")
    if not isinstance(method, str) or method not in METHODS:
        close = difflib.get_close_matches(str(method).lower(), list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"Unknown method {method!r} in {source}; choose one of {', '.join(METHODS)}.{hint}")

    fields = recipe_fields(method)
    valid = sorted(fields) + sorted(PARSER_KEYS)
    config: dict[str, Any] = {}
    for key, value in raw.items():
        if key in PARSER_KEYS:
            continue
        if key not in fields:
            raise _unknown_key_error(key, method, valid, source)
        config[key] = check_value(key, value, fields[key], method)
    for key in deferred or {}:
        if key not in fields:
            raise _unknown_key_error(key, method, valid, source)
    cli_config = _cli_config(cli, fields, method, valid)

    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise RecipeError(f"'env' in {source} must be a mapping of VARIABLE: value.")
    config.update(settings or {})
    config.update(cli_config)
    if "use_cpu" not in cli_config and not _cuda_available():
        config["use_cpu"] = True
    prefer_activation_checkpointing(config, fields)

    parser = TrlParser(dataclass_types(method))
    parser.set_defaults_with_config(**config)
    try:
        # every override is already in `config`, checked and converted: the parser only builds the dataclasses
        script, training, model, mixture = parser.parse_args_into_dataclasses(args=[])
    except SystemExit as err:  # pragma: no cover - argparse found nothing to parse
        raise RecipeError(f"Invalid {source} for method {method!r}.") from err
    except (ValueError, TypeError) as err:
        raise RecipeError(f"Invalid {source} for method {method!r}: {err}") from None

    recipe = Recipe(
        method=method,
        path=path,
        script=script,
        training=training,
        model=model,
        datasets=mixture,
        raw=raw,
        overrides=overrides,
        env={str(k): str(v) for k, v in env.items()},
    )
    for key, value in (deferred or {}).items():
        owner = next(c for c in (script, training, model, mixture) if key in {f.name for f in dataclasses.fields(c)})
        setattr(owner, key, value)
    _validate_semantics(recipe, source)
    return recipe


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _validate_semantics(recipe: Recipe, source: str) -> None:
    m = recipe.model
    if not m.model_name_or_path:
        raise RecipeError(f"{source} has no 'model_name_or_path'; name a Hub model, a local path or builtin:tiny-chat.")
    if m.load_in_4bit and m.load_in_8bit:
        raise RecipeError(f"{source} sets both load_in_4bit and load_in_8bit; keep one.")
    if (m.load_in_4bit or m.load_in_8bit) and not m.use_peft:
        raise RecipeError(
            f"{source} loads the model in {'4' if m.load_in_4bit else '8'}-bit without use_peft: quantized weights "
            "cannot be trained directly. Add `use_peft: true` (QLoRA) or drop the quantization."
        )
    if not recipe.script.dataset_name and not recipe.datasets.datasets:
        raise RecipeError(f"{source} names no dataset; add `dataset_name:` (e.g. builtin:preferences) or `datasets:`.")
    rewards = (
        recipe.script.reward_funcs,
        recipe.script.reward_model_name_or_path,
        getattr(recipe.training, "reward_adapter_path", None),
    )
    check_report_to(recipe.training.report_to, source)
    if recipe.method in ("grpo", "ppo") and not any(rewards):
        raise RecipeError(
            f"{source} uses method {recipe.method!r} but names no reward: add `reward_funcs:` (import paths) "
            "and/or `reward_model_name_or_path:`" + (" or `reward_adapter_path:`." if recipe.method == "ppo" else ".")
        )


def resolve_accelerate_config(recipe_path: str | None, config: str | None) -> str | None:
    """The accelerate config file a recipe names (``accelerate_config``), checked to exist.

    Args:
        recipe_path (`str`, *optional*):
            The recipe file; a relative ``config`` is tried from the current directory, then from its directory.
        config (`str`, *optional*):
            The accelerate config as written.

    Returns:
        `str` or `None`: the path found, or None when ``config`` is None.

    Raises:
        RecipeError: naming every place looked in.
    """
    if config is None:
        return None
    candidates = [Path(config)]
    if recipe_path is not None and not Path(config).is_absolute():
        candidates.append(Path(recipe_path).resolve().parent / config)
    for cand in candidates:
        if cand.is_file():
            return str(cand)
    raise RecipeError(f"accelerate config {config!r} not found (looked in {', '.join(map(str, candidates))}).")
