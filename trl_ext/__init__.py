"""trl-ext: PPO with a critic, EWC forgetting control, query-rewrite rewards and 24 GB recipes for TRL."""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public API, imported lazily so that `import trl_ext` (and the CLI) stays fast.
_EXPORTS = {
    "DPOConfig": "trl_ext.trainers.dpo",
    "DPOTrainer": "trl_ext.trainers.dpo",
    "GRPOConfig": "trl_ext.trainers.grpo",
    "GRPOTrainer": "trl_ext.trainers.grpo",
    "KTOConfig": "trl_ext.trainers.kto",
    "KTOTrainer": "trl_ext.trainers.kto",
    "Recipe": "trl_ext.recipe",
    "RecipeError": "trl_ext.recipe",
    "load_recipe": "trl_ext.recipe",
    "load_model_and_tokenizer": "trl_ext.modeling",
    "get_peft_config": "trl_ext.modeling",
    "get_quantization_config": "trl_ext.modeling",
    "merge_adapter": "trl_ext.merge",
    "load_reward_funcs": "trl_ext.rewards",
    "KeywordReward": "trl_ext.rewards.keyword",
    # issue-owned modules; each name below is defined by its module
    "PPOConfig": "trl_ext.trainers.ppo",
    "PPOTrainer": "trl_ext.trainers.ppo",
    "QueryRewriteReward": "trl_ext.rewards.query_rewrite",
    "EWCArguments": "trl_ext.ewc",
    "ForgettingMonitorCallback": "trl_ext.callbacks",
    "estimate_memory": "trl_ext.memory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trl_ext' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from trl_ext.merge import merge_adapter
    from trl_ext.modeling import get_peft_config, get_quantization_config, load_model_and_tokenizer
    from trl_ext.recipe import Recipe, RecipeError, load_recipe
    from trl_ext.rewards import load_reward_funcs
    from trl_ext.trainers.dpo import DPOConfig, DPOTrainer
    from trl_ext.trainers.grpo import GRPOConfig, GRPOTrainer
    from trl_ext.trainers.kto import KTOConfig, KTOTrainer
