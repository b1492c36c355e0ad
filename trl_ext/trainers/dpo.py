"""DPO: TRL's `DPOTrainer` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import trl

from trl_ext.ewc.args import EWCArguments, document_ewc_fields
from trl_ext.ewc.trainer import EWCTrainerMixin
from trl_ext.trainers.base import SharedTrainerMixin


@document_ewc_fields
@dataclass
class DPOConfig(EWCArguments, trl.DPOConfig):
    """TRL's `trl.DPOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.ewc.EWCArguments` (listed below)."""


class DPOTrainer(EWCTrainerMixin, SharedTrainerMixin, trl.DPOTrainer):
    """TRL's `trl.DPOTrainer` with QLoRA adapters kept in the compute dtype, the EWC penalty
    (`ewc_lambda > 0`) and the forgetting monitor (`forgetting_anchor_dataset`)."""
