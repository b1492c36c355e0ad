"""Configs of the methods that are TRL's own trainers plus trl-ext's shared keys (EWC, forgetting monitor, the
starting policy).

Each is TRL's config class with the fields of `trl_ext.configs.ewc.EWCArguments` added (and, for the methods with a
reference, `trl_ext.configs.policy.StartingPolicyArguments`): every TRL field works unchanged. They live on the ground
floor (not next to their trainers) because the recipe schema is made of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import trl

from trl_ext.configs.ewc import EWCArguments, document_ewc_fields
from trl_ext.configs.policy import StartingPolicyArguments, document_policy_fields
from trl_ext.recipe_arguments import ChatTemplateArguments


@document_policy_fields
@document_ewc_fields
@dataclass
class DPOConfig(EWCArguments, StartingPolicyArguments, ChatTemplateArguments, trl.DPOConfig):
    """TRL's `trl.DPOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.configs.ewc.EWCArguments` and `sft_adapter_path` (listed below)."""


@document_policy_fields
@document_ewc_fields
@dataclass
class GRPOConfig(EWCArguments, StartingPolicyArguments, ChatTemplateArguments, trl.GRPOConfig):
    """TRL's `trl.GRPOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.configs.ewc.EWCArguments` and `sft_adapter_path` (listed below; the reference adapter is used when
    `beta > 0`)."""


@document_policy_fields
@document_ewc_fields
@dataclass
class KTOConfig(EWCArguments, StartingPolicyArguments, ChatTemplateArguments, trl.KTOConfig):
    """TRL's `trl.KTOConfig`; every TRL field works unchanged, plus the EWC and forgetting-monitor keys
    of `trl_ext.configs.ewc.EWCArguments` and `sft_adapter_path` (listed below)."""


@document_ewc_fields
@dataclass
class SFTConfig(EWCArguments, trl.SFTConfig):
    """TRL's `trl.SFTConfig`; every TRL field works unchanged (conversational or plain-text data,
    `completion_only_loss`, `assistant_only_loss`, `packing`), plus the EWC and forgetting-monitor keys of
    `trl_ext.configs.ewc.EWCArguments` (listed below)."""


@dataclass
class RewardConfig(trl.RewardConfig):
    """TRL's `trl.RewardConfig`, unchanged. With `use_peft: true` in the recipe, trl-ext's `RewardTrainer` trains a
    LoRA sequence-classification adapter whose `score` head is saved through `modules_to_save`: the directory PPO's
    `reward_adapter_path` loads."""
