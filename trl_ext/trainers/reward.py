"""Reward model: TRL's `RewardTrainer` training a LoRA sequence-classification adapter on the (4-bit) base.

The output directory is what PPO's `reward_adapter_path` loads: `adapter_config.json` (LoRA, task type `SEQ_CLS`,
the base model's name) and `adapter_model.safetensors` with the LoRA weights and the `score` head (saved through
`modules_to_save`). Held-out pairwise accuracy and margin are TRL's `eval_accuracy` and `eval_margin`; with an eval
dataset they are also measured once after training and logged.
"""

from __future__ import annotations

import dataclasses

import trl
from transformers import AutoModelForSequenceClassification

from trl_ext.configs.methods import RewardConfig
from trl_ext.trainers.base import SharedTrainerMixin

__all__ = ["RewardConfig", "RewardTrainer"]  # the config is re-exported next to its trainer, as in TRL

#: Classification heads of `AutoModelForSequenceClassification` models, trained in full and saved with the adapter.
HEAD_MODULES = ["score", "classifier"]


def reward_peft_config(peft_config):
    """A causal-LM LoRA config turned into the reward model's: task type `SEQ_CLS`, the head in `modules_to_save`.

    Args:
        peft_config (`peft.LoraConfig` or `None`):
            The recipe's LoRA configuration (TRL's `get_peft_config` gives task type `CAUSAL_LM`).

    Returns:
        `peft.LoraConfig` or `None`: the reward model's LoRA configuration (a copy), `None` without LoRA.
    """
    if peft_config is None:
        return None
    modules = list(peft_config.modules_to_save or [])
    modules += [m for m in HEAD_MODULES if m not in modules]
    return dataclasses.replace(peft_config, task_type="SEQ_CLS", modules_to_save=modules)


class RewardTrainer(SharedTrainerMixin, trl.RewardTrainer):
    """TRL's `trl.RewardTrainer` with a LoRA `peft_config` applied as a sequence-classification adapter (score head in
    `modules_to_save`) and QLoRA adapters kept in the compute dtype. After training, the held-out pairwise accuracy
    and margin (`eval_accuracy`, `eval_margin`) are measured once when an eval dataset is given.

    Args:
        model (`PreTrainedModel`):
            An `AutoModelForSequenceClassification` with `num_labels=1` (`model_loading` says how `trl_ext.train`
            loads one).
        *args, **kwargs:
            As `trl.RewardTrainer`; `peft_config` is passed through `reward_peft_config`.
    """

    _tag_names = ["trl", "trl-ext", "reward-trainer"]
    #: How `trl_ext.train` loads the model for this trainer (`trl_ext.modeling.load_model` arguments).
    model_loading = {"model_class": AutoModelForSequenceClassification, "num_labels": 1}

    def __init__(self, *args, peft_config=None, **kwargs):
        super().__init__(*args, peft_config=reward_peft_config(peft_config), **kwargs)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        if self.eval_dataset is not None:
            metrics = self.evaluate()
            self.accelerator.print(
                f"held-out pairwise accuracy {metrics['eval_accuracy']:.3f}, margin {metrics['eval_margin']:.3f}"
            )
        return output
