"""Configs of the methods that are TRL's own trainers plus trl-ext's shared keys (EWC, forgetting monitor).

Each is TRL's config class with the fields of `trl_ext.configs.ewc.EWCArguments` added: every TRL field works
unchanged. They live on the ground floor (not next to their trainers) because the recipe schema is made of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import trl

from trl_ext.configs.ewc import EWCArguments, document_ewc_fields


@document_ewc_fields
@dataclass
class DPOConfig(EWCArguments, trl.DPOConfig):
    """TRL's `trl.DPOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.configs.ewc.EWCArguments` (listed below)."""


@document_ewc_fields
@dataclass
class GRPOConfig(EWCArguments, trl.GRPOConfig):
    """TRL's `trl.GRPOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.configs.ewc.EWCArguments` (listed below)."""


@document_ewc_fields
@dataclass
class KTOConfig(EWCArguments, trl.KTOConfig):
    """TRL's `trl.KTOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.configs.ewc.EWCArguments` (listed below)."""
