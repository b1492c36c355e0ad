"""The recipe schema: every method's config class and the shared EWC keys. Ground floor: loads nothing."""

from trl_ext.configs.ewc import EWCArguments
from trl_ext.configs.methods import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, SFTConfig
from trl_ext.configs.policy import StartingPolicyArguments
from trl_ext.configs.ppo import PPOConfig

__all__ = [
    "DPOConfig",
    "EWCArguments",
    "GRPOConfig",
    "KTOConfig",
    "PPOConfig",
    "RewardConfig",
    "SFTConfig",
    "StartingPolicyArguments",
]
