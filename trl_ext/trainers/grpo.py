"""GRPO: TRL's ``GRPOTrainer`` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import trl

from trl_ext.trainers import TrlExtTrainerMixin


@dataclass
class GRPOConfig(trl.GRPOConfig):
    """TRL's :class:`trl.GRPOConfig`; every TRL field works unchanged."""


class GRPOTrainer(TrlExtTrainerMixin, trl.GRPOTrainer):
    """TRL's :class:`trl.GRPOTrainer` with QLoRA adapters kept in the compute dtype."""
