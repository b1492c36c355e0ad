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
from trl_ext.recipe_validation import RecipeError, check_value

#: method -> its config class in `trl_ext.configs` (the trainers are looked up by the entry points, `trl_ext.train`)
METHODS: dict[str, str] = {
    "dpo": "DPOConfig",
    "grpo": "GRPOConfig",
    "kto": "KTOConfig",
    "ppo": "PPOConfig",
}

#: Keys TRL's parser handles itself rather than through a dataclass field.
PARSER_KEYS = {"env"}


@dataclass
class RecipeArguments:
    """Script-level recipe keys: TRL's ``ScriptArguments`` fields plus trl-ext's own.

    Args:
        method (`str`):
            Training method: ``dpo``, ``grpo``, ``kto`` or ``ppo``.
        dataset_name (`str`, *optional*):
            Dataset to load: ``builtin:<name>`` for a bundled one, a local file or directory (JSON/JSONL/CSV/Parquet),
            or a Hub dataset id. Ignored if ``datasets`` (TRL's mixture) is given.
        dataset_config (`str`, *optional*):
            Dataset configuration name (``name`` of ``datasets.load_dataset``).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate on when ``eval_strategy`` is not ``no``.
        dataset_streaming (`bool`, *optional*, defaults to `False`):
            Stream the dataset.
        ignore_bias_buffers (`bool`, *optional*, defaults to `False`):
            TRL's DDP workaround for boolean buffers.
        accelerate_config (`str`, *optional*):
            accelerate config file ``trl-ext train`` launches with when none is given on the command line; a relative
            path is looked up from the current directory, then from the recipe's directory.
        reward_funcs (`list[str]`, *optional*):
            GRPO/PPO reward functions: TRL's names (``accuracy_reward``, ``think_format_reward``, ...) or dotted import
            paths. A class is instantiated with the matching entry of ``reward_kwargs``.
        reward_kwargs (`dict`, *optional*):
            Constructor arguments for reward classes, keyed by the entry of ``reward_funcs`` (full path or class name).
        reward_model_name_or_path (`str`, *optional*):
            A sequence-classification reward model (path or Hub id), used with the reward functions.
        skip_memory_check (`bool`, *optional*, defaults to `False`):
            On a GPU, ``trl-ext train`` refuses a recipe that ``trl-ext estimate`` predicts not to fit the visible GPU
            memory, before loading weights. Set true to train anyway.
        kbit_fp32_activations (`bool`, *optional*, defaults to `False`):
            Under QLoRA/8-bit, keep PEFT's fp32 embeddings and norm weights, so the residual stream, norm outputs,
            4-bit linear outputs and KV cache are fp32 (the behaviour before lean activations; about twice the
            activation memory). By default they are in the compute dtype (bf16/fp16).
    """

    method: str | None = field(default=None, metadata={"help": "Training method: dpo, grpo, kto or ppo."})
    dataset_name: str | None = field(default=None, metadata={"help": "builtin:<name>, a local path or a Hub id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset."})
    ignore_bias_buffers: bool = field(default=False, metadata={"help": "TRL's DDP workaround for bool buffers."})
    accelerate_config: str | None = field(default=None, metadata={"help": "accelerate config for `trl-ext train`."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": "Reward functions (names/import paths)."})
    reward_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Constructor kwargs for reward classes, keyed by reward_funcs entry."}
    )
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model path or Hub id."})
    skip_memory_check: bool = field(
        default=False, metadata={"help": "Train even if the memory estimate says the recipe does not fit the GPU."}
    )
    kbit_fp32_activations: bool = field(
        default=False, metadata={"help": "QLoRA: keep an fp32 residual stream (k-bit prep's upcast) instead of bf16."}
    )


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
        return {key for key, _ in _split_cli(self.overrides)}


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
    hint = ""
    if other:
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


def _split_cli(overrides: list[str]) -> list[tuple[str, str | None]]:
    """``["--lr", "1", "--flag", "--x=2"]`` -> ``[("lr", "1"), ("flag", None), ("x", "2")]``."""
    out, i = [], 0
    while i < len(overrides):
        tok = overrides[i]
        if not tok.startswith("--"):
            raise RecipeError(f"Unexpected command-line argument {tok!r}; overrides look like --key value.")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            out.append((key, val))
            i += 1
        elif i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
            out.append((key, overrides[i + 1]))
            i += 2
        else:
            out.append((key, None))
            i += 1
    return out


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
    raw: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise RecipeError(f"Recipe file {path} does not exist.") from None
        except yaml.YAMLError as err:
            raise RecipeError(f"Recipe {path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"Recipe {path} must be a YAML mapping of key: value, got {type(raw).__name__}.")
    return build_recipe(raw, overrides, path=str(path) if path is not None else None)


def build_recipe(
    raw: dict, overrides: list[str] | None = None, path: str | None = None, settings: dict[str, Any] | None = None
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

    Returns:
        `Recipe`: the validated recipe.

    Raises:
        RecipeError: naming the key and the fix.
    """
    from trl import TrlParser

    overrides = list(overrides or [])
    source = f"recipe {path}" if path is not None else "the command line"
    cli = _split_cli(overrides)
    method = next((v for k, v in cli if k == "method"), None) or raw.get("method")
    if method is None:
        raise RecipeError(f"{source} has no 'method' key; add `method: dpo` (or grpo, kto, ppo).")
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
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
    for key, _ in cli:
        if key not in fields and key != "config":
            raise _unknown_key_error(key, method, valid, "the command-line overrides")

    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise RecipeError(f"'env' in {source} must be a mapping of VARIABLE: value.")
    config.update(settings or {})
    if "use_cpu" not in {k for k, _ in cli} and not _cuda_available():
        config["use_cpu"] = True

    parser = TrlParser(dataclass_types(method))
    parser.set_defaults_with_config(**config)
    try:
        script, training, model, mixture = parser.parse_args_into_dataclasses(args=overrides)
    except SystemExit as err:  # argparse already printed "argument --key: invalid ... value"
        raise RecipeError(f"Invalid command-line override for method {method!r} (see the message above).") from err
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
