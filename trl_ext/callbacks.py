"""Trainer callbacks. `ForgettingMonitorCallback` measures forgetting while any trainer trains."""

from __future__ import annotations

import contextlib
import logging

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from trl_ext.data.samples import collate, load_token_samples
from trl_ext.modeling import eval_mode

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _active_adapter(model, name: str):
    """Run `model` (a `PeftModel`) with adapter `name` active, then restore the active adapter and every parameter's
    `requires_grad` (PEFT's `set_adapter` makes the adapter it activates trainable)."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)
        for param, flag in flags:
            param.requires_grad_(flag)


class ForgettingMonitorCallback(TrainerCallback, ExportableState):
    """Every `eval_steps` optimizer steps, measure how far the policy drifted from what it knew.

    Logs `forgetting/anchor_nll_delta` (mean token NLL on the anchor dataset minus its value before training) and
    `forgetting/kl_to_reference` (measured mean token KL(reference || policy) on the anchor texts, teacher-forced;
    the reference is `reference_model` if given, else the PEFT model's frozen reference adapter `reference_adapter`
    when it has one (the starting policy of a run from `sft_adapter_path`), else the PEFT model with its adapters
    disabled). Also logs
    `forgetting/anchor_nll`. Works with any transformers/TRL trainer, with or without EWC; trl-ext's trainers attach
    it themselves when their config sets `forgetting_anchor_dataset`. The baseline (the NLL before training) is
    kept in every checkpoint's `trainer_state.json`, so a resumed run measures its deltas from the same baseline.

    Args:
        anchor_dataset (`str`):
            Any dataset name a recipe accepts (`builtin:general_text`, a local file, a Hub id) with a `text`,
            `messages`, `prompt`+`completion` or `prompt`+`chosen` column.
        split (`str`, *optional*, defaults to `"test"`):
            Split to read, optionally sliced (`test[:32]`); `train`, with the same slice, if the dataset has no
            such split.
        eval_steps (`int`, *optional*, defaults to `50`):
            Optimizer steps between evaluations.
        num_samples (`int`, *optional*, defaults to `64`):
            Anchor sequences per evaluation (the same ones every time).
        max_length (`int`, *optional*, defaults to `256`):
            Longest anchor sequence in tokens.
        batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward pass.
        reference_model (`PreTrainedModel`, *optional*):
            The reference for the KL; needed for models without a PEFT adapter to disable.
        seed (`int`, *optional*, defaults to `0`):
            Which anchor sequences are drawn.
        reference_adapter (`str`, *optional*, defaults to `"ref"`):
            Name of the PEFT model's frozen reference adapter: when the model has an adapter of that name (trl-ext's
            DPO, KTO, GRPO and PPO add it when they start from `sft_adapter_path`), the KL is measured against it
            instead of the base.

    Example:

    ```python
    trainer = DPOTrainer(...)
    ForgettingMonitorCallback("builtin:general_text", eval_steps=20).attach(trainer)
    trainer.train()
    ```
    """

    def __init__(
        self,
        anchor_dataset: str,
        split: str = "test",
        eval_steps: int = 50,
        num_samples: int = 64,
        max_length: int = 256,
        batch_size: int = 8,
        reference_model=None,
        seed: int = 0,
        reference_adapter: str | None = "ref",
    ):
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be a positive integer; got {eval_steps}.")
        self.anchor_dataset = anchor_dataset
        self.split = split
        self.eval_steps = eval_steps
        self.num_samples = num_samples
        self.max_length = max_length
        self.batch_size = batch_size
        self.reference_model = reference_model
        self.reference_adapter = reference_adapter
        self.seed = seed
        self.samples = None
        self.pad_token_id = 0
        self.baseline_nll: float | None = None
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}

    def attach(self, trainer) -> ForgettingMonitorCallback:
        """Add the monitor to `trainer` right after its flow callback, so that reporting integrations (wandb,
        tensorboard, ...) see the metrics too.

        Args:
            trainer (`transformers.Trainer`):
                The trainer to monitor.

        Returns:
            `ForgettingMonitorCallback`: the monitor itself.
        """
        callbacks = trainer.callback_handler.callbacks
        callbacks.insert(min(1, len(callbacks)), self)
        return self

    # ---------------------------------------------------------------------------------------------------------
    def _load(self, tokenizer):
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.samples = load_token_samples(
            self.anchor_dataset,
            tokenizer,
            self.num_samples,
            self.max_length,
            split=self.split,
            seed=self.seed,
            fallback_split="train",
            split_key="forgetting_anchor_split",
        )

    def _reference(self, model):
        if self.reference_model is not None:
            return self.reference_model, contextlib.nullcontext()
        if self.reference_adapter in getattr(model, "peft_config", {}):
            return model, _active_adapter(model, self.reference_adapter)
        if hasattr(model, "disable_adapter"):
            return model, model.disable_adapter()
        return None, None

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Measure `model` on the anchor samples now.

        Args:
            model (`PreTrainedModel` or `PeftModel`):
                The policy (possibly DDP-wrapped); evaluated in eval mode, its training mode restored afterwards.

        Returns:
            `dict[str, float]`: `forgetting/anchor_nll` and, when there is a reference, `forgetting/kl_to_reference`.
        """
        model = getattr(model, "module", model)
        was_training = model.training
        eval_mode(model)
        device = next(model.parameters()).device
        nll_sum, kl_sum, tokens = 0.0, 0.0, 0.0
        ref, _ = self._reference(model)
        try:
            for b0 in range(0, len(self.samples), self.batch_size):
                input_ids, attn, target = collate(self.samples[b0 : b0 + self.batch_size], self.pad_token_id, device)
                logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=attn).logits.float(), -1)
                labels = torch.roll(input_ids, -1, dims=1)
                token_nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
                mask = target.float()
                nll_sum += float((token_nll * mask).sum())
                tokens += float(mask.sum())
                if ref is not None:
                    _, context = self._reference(model)
                    with context:
                        ref_logp = torch.log_softmax(ref(input_ids=input_ids, attention_mask=attn).logits.float(), -1)
                    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
                    kl_sum += float((kl * mask).sum())
        finally:
            model.train(was_training)
        out = {"forgetting/anchor_nll": nll_sum / max(tokens, 1.0)}
        if ref is not None:
            out["forgetting/kl_to_reference"] = kl_sum / max(tokens, 1.0)
        return out

    def _measure(self, model, step: int) -> dict[str, float]:
        metrics = self.evaluate(model)
        metrics["forgetting/anchor_nll_delta"] = metrics["forgetting/anchor_nll"] - self.baseline_nll
        self.history.append({"step": step, **metrics})
        return metrics

    def state(self) -> dict:
        """What a checkpoint keeps of the monitor (transformers' `ExportableState`): its arguments and baseline."""
        args = {
            "anchor_dataset": self.anchor_dataset,
            "split": self.split,
            "eval_steps": self.eval_steps,
            "num_samples": self.num_samples,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "reference_adapter": self.reference_adapter,
        }
        return {"args": args, "attributes": {"baseline_nll": self.baseline_nll}}

    # ---------------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.samples is None:
            if processing_class is None:
                raise ValueError("ForgettingMonitorCallback needs the trainer's tokenizer (processing_class).")
            self._load(processing_class)
            if self.reference_model is None and not hasattr(getattr(model, "module", model), "disable_adapter"):
                logger.warning(
                    "ForgettingMonitorCallback: the model has no adapter to disable and no "
                    "reference_model was given, so forgetting/kl_to_reference is not logged."
                )
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if self.baseline_nll is None and isinstance(saved, dict):  # resumed: the baseline of the interrupted run
            self.baseline_nll = saved.get("attributes", {}).get("baseline_nll")
        if self.baseline_nll is None:
            self.baseline_nll = self.evaluate(model)["forgetting/anchor_nll"]
            self.history.append(
                {
                    "step": state.global_step,
                    "forgetting/anchor_nll": self.baseline_nll,
                    "forgetting/anchor_nll_delta": 0.0,
                }
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._pending = self._measure(model, state.global_step)
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None and not any(k.startswith("eval_") for k in logs):
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = {}
