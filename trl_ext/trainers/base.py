"""What every trl-ext trainer adds to its TRL trainer, whatever the method."""

from __future__ import annotations

from trl_ext.adapters import copy_adapter, restore_adapter_weights
from trl_ext.callbacks import ForgettingMonitorCallback
from trl_ext.checkpoints import resolve_resume_checkpoint
from trl_ext.configs.ewc import EWCArguments
from trl_ext.configs.faults import FaultArguments
from trl_ext.modeling import align_adapter_dtype, eval_mode
from trl_ext.trainers.guards import (
    NonFiniteGuard,
    TrainingStopped,
    last_good_checkpoint,
    nonfinite_weights,
)


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
    - Non-finite steps are skipped and, `max_nonfinite_steps` in a row, stop the run (`NonFiniteGuard`); a model
      with a non-finite weight is never saved (`TrainingStopped`).
    - `train(resume_from_checkpoint=True)` resumes from the newest complete checkpoint, naming the incomplete ones it
      skips, and every resumed run prints `Resuming from checkpoint-N (step N of M)`.
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
        max_nonfinite = config.max_nonfinite_steps if isinstance(config, FaultArguments) else 5
        self.nonfinite_guard = NonFiniteGuard(self, max_nonfinite)
        self.add_callback(self.nonfinite_guard)
        self._resumed_from = None

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._resumed_from = resolve_resume_checkpoint(
            self.args.output_dir, resume_from_checkpoint, say=self.accelerator.print
        )
        return super().train(self._resumed_from, *args, **kwargs)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.nonfinite_guard.record_loss(loss)
        return loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        broken = nonfinite_weights(self.model)
        if broken:
            raise TrainingStopped(
                f"refusing to save to {output_dir or self.args.output_dir}: {len(broken)} weights hold NaN or inf "
                f"(first: {broken[0]}), so the model is broken. Lower the learning rate and resume from the last good "
                f"checkpoint: {last_good_checkpoint(self.args.output_dir)}."
            )
        return super().save_model(output_dir, _internal_call)

    def prediction_step(self, model, *args, **kwargs):
        eval_mode(model)  # `Trainer.evaluation_loop` called `model.eval()`; 4-bit layers must keep their flag
        return super().prediction_step(model, *args, **kwargs)
