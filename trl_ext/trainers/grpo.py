"""GRPO: TRL's `GRPOTrainer` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

import trl

from trl_ext.configs.methods import GRPOConfig
from trl_ext.ewc.trainer import EWCTrainerMixin
from trl_ext.trainers.base import SharedTrainerMixin
from trl_ext.trainers.reward_policy import RewardPolicyMixin

__all__ = ["GRPOConfig", "GRPOTrainer"]  # the config is re-exported next to its trainer, as in TRL


class GRPOTrainer(EWCTrainerMixin, SharedTrainerMixin, RewardPolicyMixin, trl.GRPOTrainer):
    """TRL's `trl.GRPOTrainer` with QLoRA adapters kept in the compute dtype, the EWC penalty
    (`ewc_lambda > 0`), the forgetting monitor (`forgetting_anchor_dataset`) and trl-ext's reward-function policy
    (`trl_ext.trainers.reward_policy`)."""
