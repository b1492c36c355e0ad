"""trl-ext: PPO with a critic, EWC forgetting control, query-rewrite rewards and 24 GB recipes for TRL."""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public API, by capability: module -> names. Imported on first use so that `import trl_ext` (and the CLI)
# stays fast.
_PUBLIC_API = {
    # trainers and their configs
    "trl_ext.trainers.dpo": ("DPOConfig", "DPOTrainer"),
    "trl_ext.trainers.grpo": ("GRPOConfig", "GRPOTrainer"),
    "trl_ext.trainers.kto": ("KTOConfig", "KTOTrainer"),
    "trl_ext.trainers.ppo": ("PPOConfig", "PPOTrainer"),
    "trl_ext.trainers.reward": ("RewardConfig", "RewardTrainer"),
    "trl_ext.trainers.sft": ("SFTConfig", "SFTTrainer"),
    # recipes
    "trl_ext.recipe": ("Recipe", "RecipeError", "load_recipe"),
    # modeling: quantized loading, LoRA, merge
    "trl_ext.modeling": ("get_peft_config", "get_quantization_config", "load_model_and_tokenizer"),
    "trl_ext.merge": ("merge_adapter",),
    # EWC and forgetting
    "trl_ext.ewc": ("EWCArguments",),
    "trl_ext.callbacks": ("ForgettingMonitorCallback",),
    # rewards
    "trl_ext.rewards": ("KeywordReward", "load_reward_funcs"),
    "trl_ext.rewards.query_rewrite": ("QueryRewriteReward",),
    # memory
    "trl_ext.memory": ("estimate_memory",),
}
_EXPORTS = {name: module for module, names in _PUBLIC_API.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trl_ext' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover -- the same names, for type checkers and IDEs (tests/test_public_api.py)
    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.ewc import EWCArguments
    from trl_ext.memory import estimate_memory
    from trl_ext.merge import merge_adapter
    from trl_ext.modeling import get_peft_config, get_quantization_config, load_model_and_tokenizer
    from trl_ext.recipe import Recipe, RecipeError, load_recipe
    from trl_ext.rewards import KeywordReward, load_reward_funcs
    from trl_ext.rewards.query_rewrite import QueryRewriteReward
    from trl_ext.trainers.dpo import DPOConfig, DPOTrainer
    from trl_ext.trainers.grpo import GRPOConfig, GRPOTrainer
    from trl_ext.trainers.kto import KTOConfig, KTOTrainer
    from trl_ext.trainers.ppo import PPOConfig, PPOTrainer
    from trl_ext.trainers.reward import RewardConfig, RewardTrainer
    from trl_ext.trainers.sft import SFTConfig, SFTTrainer
