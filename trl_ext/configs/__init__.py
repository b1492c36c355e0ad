"""The recipe schema: every method's config class, the shared EWC and fault-policy keys. Ground floor: loads nothing."""

from trl_ext.configs.ewc import EWCArguments
from trl_ext.configs.faults import FaultArguments
from trl_ext.configs.methods import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, SFTConfig
from trl_ext.configs.policy import StartingPolicyArguments
from trl_ext.configs.ppo import PPOConfig

__all__ = [
    "DPOConfig",
    "EWCArguments",
    "FaultArguments",
    "GRPOConfig",
    "KTOConfig",
    "PPOConfig",
    "RewardConfig",
    "SFTConfig",
    "StartingPolicyArguments",
]
