"""DPO: TRL's ``DPOTrainer`` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import trl

from trl_ext.trainers import TrlExtTrainerMixin


@dataclass
class DPOConfig(trl.DPOConfig):
    """TRL's :class:`trl.DPOConfig`; every TRL field works unchanged."""


class DPOTrainer(TrlExtTrainerMixin, trl.DPOTrainer):
    """TRL's :class:`trl.DPOTrainer` with QLoRA adapters kept in the compute dtype."""
