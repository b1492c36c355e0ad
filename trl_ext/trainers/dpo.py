"""DPO: TRL's `DPOTrainer` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

import trl

from trl_ext.configs.methods import DPOConfig
from trl_ext.ewc.trainer import EWCTrainerMixin
from trl_ext.trainers.base import SharedTrainerMixin

__all__ = ["DPOConfig", "DPOTrainer"]  # the config is re-exported next to its trainer, as in TRL


class DPOTrainer(EWCTrainerMixin, SharedTrainerMixin, trl.DPOTrainer):
    """TRL's `trl.DPOTrainer` with QLoRA adapters kept in the compute dtype, the EWC penalty
    (`ewc_lambda > 0`) and the forgetting monitor (`forgetting_anchor_dataset`)."""
