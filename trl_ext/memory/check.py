"""A recipe's estimated peak GPU memory, and the check `trl-ext train` runs before it loads any weight."""

from __future__ import annotations

import logging
import os

from trl_ext.memory.arch import find_config, load_architecture
from trl_ext.memory.estimator import MemoryEstimate, estimate_settings
from trl_ext.memory.report import attach_suggestions, memory_check_error
from trl_ext.memory.settings import settings_from_recipe
from trl_ext.recipe import Recipe, RecipeError, load_recipe

logger = logging.getLogger(__name__)


def estimate_memory(
    recipe,
    gpu_memory_gb: float = 24.0,
    *,
    gpu_memory_bytes: float | None = None,
    overrides: list[str] | None = None,
    prompt_length: int | None = None,
    full_logits: bool | None = None,
) -> MemoryEstimate:
    """Estimate a recipe's peak GPU memory on one GPU.

    Reads the model's `config.json` (local, bundled or cached; never downloaded). The formulas are documented in
    `trl_ext.memory.estimator`.

    Args:
        recipe (`Recipe`, `str` or `os.PathLike`):
            A loaded `trl_ext.recipe.Recipe` or the path of a recipe YAML.
        gpu_memory_gb (`float`, *optional*, defaults to `24.0`):
            GPU memory in GB (10^9 bytes) to judge the estimate against.
        gpu_memory_bytes (`float` or `None`, *optional*):
            GPU memory in bytes; takes precedence over `gpu_memory_gb`.
        overrides (`list[str]` or `None`, *optional*):
            `--key value` recipe overrides, used when `recipe` is a path.
        prompt_length (`int` or `None`, *optional*):
            GRPO/PPO prompt tokens; default from the recipe, else 512.
        full_logits (`bool` or `None`, *optional*):
            Model a trainer that materializes the full logits; default: what the installed TRL does.

    Returns:
        `MemoryEstimate`: One component per memory consumer, the predicted peak, the verdict against the GPU size and,
        when it does not fit, re-estimated suggestions.
    """
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
    return attach_suggestions(estimate_settings(arch, settings, gpu, reward_arch))


def check_recipe_memory(recipe: Recipe, gpu_memory_bytes: float) -> MemoryEstimate | None:
    """Refuse a recipe that is predicted not to fit the GPU.

    Skipped with `skip_memory_check: true`, or with a warning when the model's `config.json` is not available
    offline.

    Args:
        recipe (`Recipe`):
            The loaded recipe.
        gpu_memory_bytes (`float`):
            Memory of the GPU the run will use, in bytes.

    Returns:
        `MemoryEstimate` or `None`: The estimate when it fits, `None` when the check was skipped.

    Raises:
        `RecipeError`: When the estimate does not fit; the message names the biggest components and suggestions.
    """
    if getattr(recipe.script, "skip_memory_check", False):
        return None
    try:
        estimate = estimate_memory(recipe, gpu_memory_bytes=gpu_memory_bytes)
    except FileNotFoundError as err:
        logger.warning("Memory check skipped: %s", err)
        return None
    message = memory_check_error(estimate)
    if message:
        raise RecipeError(message)
    return estimate
