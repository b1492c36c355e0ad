"""What every trl-ext trainer adds to its TRL trainer, whatever the method."""

from __future__ import annotations

from trl_ext.callbacks import ForgettingMonitorCallback
from trl_ext.configs.ewc import EWCArguments
from trl_ext.modeling import align_adapter_dtype, copy_adapter, eval_mode, restore_adapter_weights


class SharedTrainerMixin:
    """Behaviour every trl-ext trainer (DPO, GRPO, KTO, PPO) shares; placed before the TRL trainer in the bases.

    - QLoRA adapters compute in the 4-bit compute dtype (`trl_ext.modeling.align_adapter_dtype`): TRL casts them to
      bf16, which on CPU or pre-Ampere GPUs is not the dtype the layer computes in.
    - A policy that starts from `sft_adapter_path` starts from its saved weights exactly (TRL rounds a quantized
      model's adapter to bf16), and its `ref` adapter is an exact copy of it: the KL to the reference is 0 at step 0.
    - Evaluation keeps bitsandbytes 4-bit layers in their training flag (`trl_ext.modeling.eval_mode`): on CPU, an
      evaluation forward in eval mode repacks their weights and breaks the next training step.
    - With `forgetting_anchor_dataset` set in the config, the forgetting monitor (`ForgettingMonitorCallback`) is
      attached with the config's `forgetting_*` keys, with or without EWC.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        start = getattr(self.args, "sft_adapter_path", None)
        if start:  # TRL rounded the starting policy's weights to bf16: put the saved values back
            restore_adapter_weights(self.accelerator.unwrap_model(self.model), start)
        align_adapter_dtype(self.model)
        if start and "ref" in getattr(self.accelerator.unwrap_model(self.model), "peft_config", {}):
            copy_adapter(self.accelerator.unwrap_model(self.model), "default", "ref")  # reference == policy, exactly
        config = self.args
        if isinstance(config, EWCArguments) and config.forgetting_anchor_dataset:
            ForgettingMonitorCallback(
                config.forgetting_anchor_dataset,
                split=config.forgetting_anchor_split,
                eval_steps=config.forgetting_eval_steps,
                num_samples=config.forgetting_eval_samples,
                max_length=config.forgetting_max_length,
                seed=config.seed,
            ).attach(self)

    def prediction_step(self, model, *args, **kwargs):
        eval_mode(model)  # `Trainer.evaluation_loop` called `model.eval()`; 4-bit layers must keep their flag
        return super().prediction_step(model, *args, **kwargs)
