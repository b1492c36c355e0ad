"""Analytic peak-GPU-memory estimator for trl-ext recipes (``trl-ext estimate``).

:func:`estimate_memory` reads a recipe, the model's ``config.json`` (local, bundled or cached; never downloaded) and
returns a :class:`MemoryEstimate`: one :class:`Component` per memory consumer, the predicted peak, a verdict against
the GPU size and re-estimated suggestions when it does not fit. The formulas are documented in
:mod:`trl_ext.memory.estimator`. ``trl-ext train`` calls :func:`check_recipe_memory` before loading weights.
"""

from __future__ import annotations

import os

from trl_ext.memory.arch import Architecture, architecture_from_config, find_config, load_architecture
from trl_ext.memory.estimator import GiB, Component, MemoryEstimate, estimate_settings, with_settings
from trl_ext.memory.report import (PRESET_TARGET_GIB, estimate_cli, estimate_line, estimate_to_dict, finish,
                                   format_estimate, memory_check_error)
from trl_ext.memory.settings import MemorySettings, settings_from_recipe

__all__ = ["Architecture", "Component", "MemoryEstimate", "MemorySettings", "GiB", "PRESET_TARGET_GIB",
           "architecture_from_config", "check_recipe_memory", "estimate_cli", "estimate_line", "estimate_memory",
           "estimate_settings", "estimate_to_dict", "find_config", "format_estimate", "load_architecture",
           "settings_from_recipe", "with_settings"]


def estimate_memory(recipe, gpu_memory_gb: float = 24.0, *, gpu_memory_bytes: float | None = None,
                    overrides: list[str] | None = None, prompt_length: int | None = None,
                    full_logits: bool | None = None) -> MemoryEstimate:
    """Estimate a recipe's peak GPU memory on one GPU of ``gpu_memory_gb`` GB (10^9 bytes) or ``gpu_memory_bytes``.

    Args:
        recipe: a :class:`trl_ext.recipe.Recipe` or the path of a recipe YAML.
        overrides: ``--key value`` recipe overrides (when ``recipe`` is a path).
        prompt_length: GRPO/PPO prompt tokens; default from the recipe, else 512.
        full_logits: model a trainer that materializes the full logits (default: what the installed TRL does).
    """
    from trl_ext.recipe import Recipe, load_recipe

    if not isinstance(recipe, Recipe):
        if not isinstance(recipe, (str, os.PathLike)):
            raise TypeError(f"estimate_memory expects a Recipe or a recipe path, got {type(recipe).__name__}.")
        recipe = load_recipe(recipe, overrides)
    settings = settings_from_recipe(recipe, prompt_length=prompt_length, full_logits=full_logits)
    arch = load_architecture(settings.model)
    reward_arch = None
    if settings.reward_model and find_config(settings.reward_model) is not None:
        reward_arch = load_architecture(settings.reward_model)
    gpu = gpu_memory_bytes if gpu_memory_bytes is not None else gpu_memory_gb * 1e9
    return finish(estimate_settings(arch, settings, gpu, reward_arch))


def check_recipe_memory(recipe, gpu_memory_bytes: float) -> MemoryEstimate | None:
    """Raise :class:`trl_ext.recipe.RecipeError` when ``recipe`` is predicted not to fit ``gpu_memory_bytes``.

    Skipped (returns None) with ``skip_memory_check: true`` or when the model's config.json is not available
    offline (a warning says so). Used by ``trl-ext train`` before any weight is loaded.
    """
    import logging

    from trl_ext.recipe import RecipeError

    if getattr(recipe.script, "skip_memory_check", False):
        return None
    try:
        est = estimate_memory(recipe, gpu_memory_bytes=gpu_memory_bytes)
    except FileNotFoundError as err:
        logging.getLogger(__name__).warning("Memory check skipped: %s", err)
        return None
    message = memory_check_error(est)
    if message:
        raise RecipeError(message)
    return est
