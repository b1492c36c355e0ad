"""SFT: TRL's `SFTTrainer` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

import trl

from trl_ext.configs.methods import SFTConfig
from trl_ext.ewc.trainer import EWCTrainerMixin
from trl_ext.trainers.base import SharedTrainerMixin

__all__ = ["SFTConfig", "SFTTrainer"]  # the config is re-exported next to its trainer, as in TRL


class SFTTrainer(EWCTrainerMixin, SharedTrainerMixin, trl.SFTTrainer):
    """TRL's `trl.SFTTrainer` with QLoRA adapters kept in the compute dtype, the EWC penalty (`ewc_lambda > 0`) and
    the forgetting monitor (`forgetting_anchor_dataset`). Conversational (`messages`, or `prompt` + `completion`)
    and plain-text (`text`) data, `completion_only_loss`, `assistant_only_loss` and `packing` are TRL's."""
