"""Analytic peak-GPU-memory estimator for trl-ext recipes (`trl-ext estimate`).

`estimate_memory` reads a recipe and the model's `config.json` and returns a `MemoryEstimate`: one `Component` per
memory consumer, the predicted peak, a verdict against the GPU size and re-estimated suggestions when it does not fit.
The formulas are documented in `trl_ext.memory.estimator`; `trl-ext train` calls `check_recipe_memory` before
loading weights.
"""

from trl_ext.memory.arch import Architecture, architecture_from_config, find_config, load_architecture
from trl_ext.memory.check import check_recipe_memory, estimate_memory
from trl_ext.memory.estimator import Component, GiB, MemoryEstimate, estimate_settings, with_settings
from trl_ext.memory.report import PRESET_TARGET_GIB, estimate_to_dict, format_estimate
from trl_ext.memory.settings import MemorySettings, settings_from_recipe

__all__ = [
    "Architecture",
    "Component",
    "MemoryEstimate",
    "MemorySettings",
    "GiB",
    "PRESET_TARGET_GIB",
    "architecture_from_config",
    "check_recipe_memory",
    "estimate_memory",
    "estimate_settings",
    "estimate_to_dict",
    "find_config",
    "format_estimate",
    "load_architecture",
    "settings_from_recipe",
    "with_settings",
]
