"""Apply a recipe to the running process, where a run starts: its ``env:`` variables and the CPU precision fallback.

`trl_ext.recipe.load_recipe` only reads and validates; `apply_runtime` is the one place a recipe changes the process.
`trl_ext.train` calls it before training (``build_trainer`` too, for recipes loaded in Python), and so do the other
commands that run a recipe's model (``trl-ext fisher``, ``trl-ext memcheck``).
"""

from __future__ import annotations

import dataclasses
import logging
import os

from trl_ext.recipe import Recipe, build_recipe

logger = logging.getLogger(__name__)

#: Mixed-precision keys turned off without CUDA (unless set on the command line).
PRECISION_KEYS = ("bf16", "fp16")


def apply_runtime(recipe: Recipe) -> Recipe:
    """Export the recipe's ``env:`` and, without CUDA, turn bf16/fp16 off; return the recipe to run.

    - Every ``env:`` variable is written to ``os.environ`` (TRL's ``env`` key), and the configs are built again
      after that, as TRL builds them after exporting ``env:``.
    - Without CUDA, bf16 and fp16 are turned off (with a warning when the recipe file asked for them; TRL's configs
      default to bf16), unless the command line sets them, so GPU presets and quickstarts run on CPU in fp32.

    Variables read when CUDA or the process group initialize (``CUDA_VISIBLE_DEVICES``, ``PYTORCH_CUDA_ALLOC_CONF``)
    should be set before the process starts: ``trl-ext train`` exports ``env:`` before it launches the training
    processes, but building the configs in `load_recipe` already initializes the device.

    Args:
        recipe (`Recipe`):
            A recipe from `trl_ext.recipe.load_recipe`. It is not modified.

    Returns:
        `Recipe`: the recipe to train with, with ``runtime_applied`` set; ``recipe`` itself when it already was.
    """
    if recipe.runtime_applied:
        return recipe
    for key, value in recipe.env.items():
        os.environ[key] = value
    settings = _cpu_precision_settings(recipe)
    if not recipe.env and not settings:
        return dataclasses.replace(recipe, runtime_applied=True)
    rebuilt = build_recipe(recipe.raw, recipe.overrides, path=recipe.path, settings=settings)
    return dataclasses.replace(rebuilt, runtime_applied=True)


def _cpu_precision_settings(recipe: Recipe) -> dict[str, bool]:
    """``{"bf16": False, ...}`` for the precision keys to turn off on this machine; empty with CUDA."""
    import torch

    if torch.cuda.is_available():
        return {}
    settings = {}
    for key in PRECISION_KEYS:
        if key in recipe.override_keys or not getattr(recipe.training, key):
            continue
        if key in recipe.raw:
            logger.warning("No CUDA device: %s mixed precision is turned off; training runs in fp32.", key)
        settings[key] = False
    return settings


#: Known-benign library messages that no setting of ours turns off, matched exactly (real warnings stay):
#: bitsandbytes logs that its optional CPU kernel (the `kernels` package, fetched from the Hub) is missing each time it
#: is imported, once per process; peft and TRL read transformers' deprecated `is_gradient_checkpointing` property.
_BNB_KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_DEPRECATED_PROPERTY_MESSAGE = r"`is_gradient_checkpointing` is deprecated and will be removed in v6"


def _not_bnb_kernels_message(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_BNB_KERNELS_MESSAGE)


def quiet_known_warnings() -> None:
    """Silence the known-benign library messages above, and only those; call it before bitsandbytes is imported.

    Idempotent. The other known one, transformers' `gradient_checkpointing` deprecation, is avoided at its source:
    recipes are built with `activation_checkpointing` set (`trl_ext.recipe.build_recipe`).
    """
    import warnings

    bnb_logger = logging.getLogger(_BNB_KERNELS_LOGGER)
    if _not_bnb_kernels_message not in bnb_logger.filters:
        bnb_logger.addFilter(_not_bnb_kernels_message)
    warnings.filterwarnings("ignore", message=_DEPRECATED_PROPERTY_MESSAGE, category=FutureWarning)
