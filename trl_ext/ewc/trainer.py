"""The EWC behaviour every trl-ext trainer shares (DPO, GRPO, KTO, PPO): one mixin, switched on by recipe keys."""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from trl_ext.configs.ewc import EWCArguments

logger = logging.getLogger(__name__)

FISHER_FILENAME = "ewc_fisher.safetensors"


def default_anchor_adapter(config) -> str | None:
    """Where EWC anchors when `ewc_anchor_adapter` is not set: the policy the run starts from (`sft_adapter_path`, on
    the methods that have it), so the penalty holds the SFT policy, not the base it was trained from. `None` (anchor
    at the base) without a starting adapter, and in `lora_params` mode, whose anchor is the starting LoRA
    parameters anyway."""
    if config.ewc_fisher_mode == "lora_params":
        return None
    return getattr(config, "sft_adapter_path", None)


class EWCTrainerMixin:
    """Adds the EWC penalty (`ewc_lambda > 0`) to a TRL trainer whose config inherits `EWCArguments`.

    Place it first in the bases: `class DPOTrainer(EWCTrainerMixin, SharedTrainerMixin, trl.DPOTrainer)`.

    The penalty's gradient is computed without autograd (float32, chunked) and added to the LoRA gradients once per
    optimizer step, on the micro-step where `accelerator.sync_gradients` is true: after DDP's all-reduce (so it is
    not averaged) and before gradient clipping. It depends only on replicated parameters and a Fisher that is
    identical on every rank, so every rank adds the same gradient and logs the same `ewc/penalty`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ewc_penalty = None
        self.ewc_fisher = None
        self._ewc_metrics: dict[str, list[float]] = defaultdict(list)
        self._ewc_start_logs: dict[str, float] = {}
        if isinstance(self.args, EWCArguments) and self.args.ewc_enabled:
            self._setup_ewc(self.args)

    # ----------------------------------------------------------------------------------------------------------
    def _setup_ewc(self, config):
        from trl_ext.ewc.data import estimate_recipe_fisher
        from trl_ext.ewc.fisher import adapted_modules, fisher_quantiles
        from trl_ext.ewc.io import combine_online, load_fisher, model_identity, save_fisher
        from trl_ext.ewc.penalty import Anchor, EWCPenalty

        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "EWC runs under DDP or a single process; DeepSpeed ZeRO and FSDP shard the LoRA "
                "gradients it adds to. Use recipes/accelerate/multi_gpu.yaml or single_gpu.yaml."
            )
        model = self.accelerator.unwrap_model(self.model)
        modules = adapted_modules(model)
        if not modules:
            raise ValueError(
                "ewc_lambda > 0 needs a LoRA adapter (EWC lives in the adapted modules' weight space); "
                "set use_peft: true."
            )
        anchors = None
        anchor_path = config.ewc_anchor_adapter or default_anchor_adapter(config)
        if anchor_path:
            anchors = self._load_anchor_adapter(model, modules, anchor_path, Anchor)

        estimate = None
        if config.ewc_fisher_path and not config.ewc_anchor_adapter:
            estimate = load_fisher(config.ewc_fisher_path, model, modules, mode=config.ewc_fisher_mode)
        else:
            tokenizer = self.processing_class
            tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
            estimate = estimate_recipe_fisher(
                model,
                config,
                tokenizer,
                process_index=self.accelerator.process_index,
                num_processes=self.accelerator.num_processes,
                gradient_checkpointing_kwargs=config.gradient_checkpointing_kwargs,
                modules=modules,
            )
            if config.ewc_fisher_path:  # online EWC: F = gamma * F_old + F_new
                old = load_fisher(config.ewc_fisher_path, model, modules, mode=config.ewc_fisher_mode)
                estimate = combine_online(old, estimate, config.ewc_gamma)
            logger.info(
                "EWC Fisher: %d sequences, %d tokens, %.1fs, split-half agreement %s",
                estimate.n_samples,
                estimate.n_tokens,
                estimate.seconds,
                estimate.split_half_agreement,
            )
        self.ewc_fisher = estimate
        if config.ewc_save_fisher and self.accelerator.is_main_process:
            save_fisher(os.path.join(config.output_dir, FISHER_FILENAME), estimate, model_identity(model))
        self.ewc_penalty = EWCPenalty(modules, estimate.tensors, config.ewc_lambda, mode=estimate.mode, anchors=anchors)
        self._ewc_start_logs = fisher_quantiles(estimate.tensors, estimate.mode, seed=config.seed)
        self._ewc_start_logs["ewc/fisher_seconds"] = float(estimate.seconds)
        if estimate.split_half_agreement is not None:
            self._ewc_start_logs["ewc/fisher_split_half_agreement"] = float(estimate.split_half_agreement)

    @staticmethod
    def _load_anchor_adapter(model, modules, path, Anchor):
        """Online EWC: start from the previous task's adapter and anchor the penalty at it."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        weights = load_peft_weights(path, device=str(modules[0].lora_A.device))
        result = set_peft_model_state_dict(model, weights)
        # other adapters of the model (the frozen `ref` copy, a critic) are not in the file: only `default` must match
        missing = [k for k in result.missing_keys if "lora_" in k and ".default." in k]
        if missing or not weights:
            raise ValueError(
                f"ewc_anchor_adapter {path} does not match this recipe's LoRA adapter (missing "
                f"{', '.join(missing[:3]) or 'all weights'}); use the same lora_r and lora_target_modules."
            )
        return {
            m.name: Anchor(m.scaling, m.lora_A.detach().float().clone(), m.lora_B.detach().float().clone())
            for m in modules
        }

    # ----------------------------------------------------------------------------------------------------------
    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if self.ewc_penalty is not None and self.accelerator.sync_gradients:
            self._add_ewc_gradients()
        return loss

    def _add_ewc_gradients(self):
        """Add the penalty's gradient once per optimizer step (the last micro-step of the accumulation)."""
        penalty, predicted_kl, grads = self.ewc_penalty.value_and_grads()
        scaler = self.accelerator.scaler
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        for param, grad in grads.items():
            grad = grad.to(param.dtype) * scale if scale != 1.0 else grad.to(param.dtype)
            if param.grad is None:
                param.grad = grad
            else:
                param.grad.add_(grad.to(param.grad.dtype))
        self._ewc_metrics["ewc/penalty"].append(float(penalty))
        self._ewc_metrics["ewc/predicted_kl"].append(float(predicted_kl))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._ewc_metrics and not any(k.startswith("eval_") for k in logs):
            logs.update({k: sum(v) / len(v) for k, v in self._ewc_metrics.items()})
            self._ewc_metrics.clear()
            if self._ewc_start_logs:
                logs.update(self._ewc_start_logs)  # Fisher quantiles, once at start
                self._ewc_start_logs = {}
        super().log(logs, start_time)
