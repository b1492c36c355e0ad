"""KTO: TRL's ``KTOTrainer`` with trl-ext's shared trainer behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import trl

from trl_ext.trainers import TrlExtTrainerMixin


@dataclass
class KTOConfig(trl.KTOConfig):
    """TRL's :class:`trl.KTOConfig`; every TRL field works unchanged."""


class KTOTrainer(TrlExtTrainerMixin, trl.KTOTrainer):
    """TRL's :class:`trl.KTOTrainer` with QLoRA adapters kept in the compute dtype."""
