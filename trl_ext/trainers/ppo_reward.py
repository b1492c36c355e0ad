"""The PPO reward model as a LoRA adapter on the actor's own base (`reward_adapter_path`).

A sequence-classification reward model trained with LoRA on the actor's base model (for example by TRL's
`RewardTrainer` with a `peft_config`) is saved as an adapter directory: LoRA weights for the backbone plus the
classification head (`score`) in `modules_to_save`. `PPORewardAdapterMixin` loads the LoRA weights as a third
adapter, `reward`, on the actor's `PeftModel` and the head as a small frozen `Linear` kept on the trainer
(not a module of the actor: the actor's saved adapter, vLLM's weight sync and the optimizer never see it). A rollout's
score is `head(hidden state at the last non-pad token)` with the `reward` adapter active, exactly what the
adapter's `AutoModelForSequenceClassification` computes. It is one more reward function, after `reward_funcs`
(and `reward_model_name_or_path`), weighted by `reward_weights` and logged as `rewards/<adapter dir name>/mean`.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers.trainer import TRAINING_ARGS_NAME

from trl_ext.configs.ppo import ADAPTER_WEIGHTS, inspect_reward_adapter

REWARD_ADAPTER = "reward"


def _same_model(a: str | None, b: str | None) -> bool:
    from trl_ext.assets import resolve_builtin

    if not a or not b:
        return False
    a, b = resolve_builtin(a), resolve_builtin(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/") == b.rstrip("/")


def _model_name(model) -> str | None:
    if isinstance(model, str):
        return model
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)


class RewardAdapterScorer:
    """A reward function with TRL's signature that scores `prompt + completion` with the reward adapter of the
    `PPOTrainer` it belongs to (set as `trainer` once the adapter is loaded). Its `__name__` (the adapter directory's
    name) is the name TRL logs the reward under.

    Args:
        path (`str`):
            The adapter directory.
    """

    def __init__(self, path: str):
        self.path = path
        self.__name__ = Path(path).resolve().name
        self.trainer = None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return self.trainer.reward_adapter_scores(self.trainer.reward_adapter_texts(prompts, completions)).tolist()


class PPORewardAdapterMixin:
    """The reward model of `PPOTrainer` as an adapter on the actor's base."""

    def _reward_funcs_with_adapter(self, model, reward_funcs, args, peft_config) -> list:
        """Before TRL's `__init__`: validate `reward_adapter_path` against the actor and return `reward_funcs`
        with the adapter's scorer appended (so `reward_weights` counts it)."""
        self._reward_scorer = None
        self._reward_head = None
        path = args.reward_adapter_path
        if path is None:
            return reward_funcs
        config, _ = inspect_reward_adapter(path)
        if peft_config is None and not hasattr(model, "peft_config"):
            raise ValueError(
                "reward_adapter_path loads the reward model as a LoRA adapter on the actor's base, so the actor must "
                "use LoRA: set use_peft: true in the recipe (or pass a peft_config), or load the reward model as a "
                "separate model with reward_model_name_or_path."
            )
        actor, base = _model_name(model), config.get("base_model_name_or_path")
        if not _same_model(actor, base):
            raise ValueError(
                f"reward_adapter_path {path} was trained on {base!r}, but the actor is {actor!r}: a LoRA adapter only "
                "fits the base it was trained on. Use a reward adapter trained on the actor's model (if both are the "
                "same weights under another name, set base_model_name_or_path in its adapter_config.json), or load "
                "the reward model separately with reward_model_name_or_path."
            )
        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        self._reward_scorer = RewardAdapterScorer(path)
        return [*reward_funcs, self._reward_scorer]

    def _attach_reward_adapter(self) -> None:
        """After the critic: load the adapter's LoRA weights as the frozen `reward` adapter and its head."""
        if self._reward_scorer is None:
            return
        from peft import PeftConfig, set_peft_model_state_dict
        from safetensors.torch import load_file

        from trl_ext.modeling import align_adapter_dtype

        path = self._reward_scorer.path
        _, head_name = inspect_reward_adapter(path)
        unwrapped = self.accelerator.unwrap_model(self.model)
        config = copy.deepcopy(PeftConfig.from_pretrained(path))
        config.modules_to_save = None  # the head is kept on the trainer, not wrapped into the actor
        config.task_type = unwrapped.peft_config[self._actor_adapter].task_type
        config.inference_mode = True
        config.lora_dropout = 0.0  # scoring is inference: no dropout even while the trainer is in train mode
        unwrapped.add_adapter(REWARD_ADAPTER, config)
        align_adapter_dtype(unwrapped)

        state = load_file(str(Path(path) / ADAPTER_WEIGHTS))
        prefix = f"base_model.model.{head_name}."
        head_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        lora_state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        result = set_peft_model_state_dict(unwrapped, lora_state, adapter_name=REWARD_ADAPTER)
        unexpected = list(getattr(result, "unexpected_keys", []))
        missing = [k for k in getattr(result, "missing_keys", []) if f".{REWARD_ADAPTER}." in k]
        if unexpected or missing:
            raise ValueError(
                f"reward_adapter_path {path} does not fit the actor's modules (unexpected: {unexpected[:3]}, "
                f"missing: {missing[:3]}). It must be a LoRA adapter of the actor's base model with LoRA and "
                f"{head_name} weights only."
            )
        weight = head_state["weight"]
        head = nn.Linear(weight.size(1), weight.size(0), bias="bias" in head_state)
        head.load_state_dict(head_state)
        self._reward_head = head.float().to(self.accelerator.device).eval().requires_grad_(False)
        self._reward_params = [p for n, p in unwrapped.named_parameters() if f".{REWARD_ADAPTER}." in n]
        self._freeze_reward_adapter()
        self._restore_trainable()
        self._reward_scorer.trainer = self

    def _freeze_reward_adapter(self) -> None:
        for param in self._reward_params:
            param.requires_grad_(False)

    def reward_adapter_texts(self, prompts, completions) -> list[str]:
        """`prompt + completion` as the reward model reads it (chat template for conversational data), as TRL.

        Args:
            prompts (`list`):
                Prompts, as strings or conversations.
            completions (`list`):
                Their completions, in the same form.

        Returns:
            `list[str]`: The texts the reward adapter scores.
        """
        from trl.data_utils import apply_chat_template, is_conversational

        if is_conversational({"prompt": prompts[0]}):
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            return [
                apply_chat_template({"messages": p + c}, tokenizer, **self.chat_template_kwargs)["text"]
                for p, c in zip(prompts, completions, strict=True)
            ]
        return [p + c for p, c in zip(prompts, completions, strict=True)]

    @torch.no_grad()
    def reward_adapter_scores(self, texts: list[str]) -> torch.Tensor:
        """Score texts with the reward adapter: its head over the hidden state at each text's last non-pad token with
        the `reward` adapter active (texts tokenized as TRL does for reward models: right padding, no special tokens).

        Args:
            texts (`list[str]`):
                Texts to score, as `reward_adapter_texts` builds them.

        Returns:
            `torch.Tensor`: The scores, `(len(texts),)` in fp32.
        """
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        encoded = tokenizer(
            text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
        ).to(self.accelerator.device)
        ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        if tokenizer.pad_token_id is not None:  # the rule of AutoModelForSequenceClassification: last id != pad
            non_pad = (ids != tokenizer.pad_token_id).int()
        else:
            non_pad = attention_mask.int()
        last = (torch.arange(ids.size(1), device=ids.device, dtype=torch.int32) * non_pad).argmax(-1)
        batch = self.args.per_device_train_batch_size
        scores = []
        with self._reward_backbone() as backbone:
            for i in range(0, ids.size(0), batch):
                with self.accelerator.autocast():
                    hidden = backbone(input_ids=ids[i : i + batch], attention_mask=attention_mask[i : i + batch])
                rows = torch.arange(hidden.last_hidden_state.size(0), device=ids.device)
                final = hidden.last_hidden_state[rows, last[i : i + batch]].float()
                scores.append(self._reward_head(final)[:, 0])
        return torch.cat(scores)

    @contextmanager
    def _reward_backbone(self):
        try:
            with self._adapter_backbone(REWARD_ADAPTER) as backbone:
                yield backbone
        finally:
            self._freeze_reward_adapter()

    # ----------------------------------------------------------------------------------------------------- saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the actor as `Trainer._save` does (adapters, tokenizer, training arguments), without the reward adapter.

        The reward adapter is an input (`reward_adapter_path`), never trained, so the actor's checkpoints leave it out.
        PEFT saves every adapter a `PeftModel` holds unless `save_pretrained` is given `selected_adapters`, and
        `Trainer._save` gives none, with no argument or hook to add it. So with a reward adapter loaded, this override
        does what `Trainer._save` does for a `PeftModel`, naming the actor's adapters; without one it is
        `Trainer._save`. `test_reward_adapter_save_writes_what_trainer_save_writes_less_the_reward_adapter` fails when
        `Trainer._save` starts writing anything else.

        Args:
            output_dir (`str`, *optional*):
                Directory to save into; `args.output_dir` when `None`.
            state_dict (`dict`, *optional*):
                The gathered state dict (DeepSpeed, FSDP), as `Trainer.save_model` passes it.
        """
        if self._reward_scorer is None:
            super()._save(output_dir, state_dict)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save and not self.is_distributed_loading_by_transformers:
            return
        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        actor_adapters = [name for name in unwrapped.peft_config if name != REWARD_ADAPTER]
        unwrapped.save_pretrained(
            output_dir, state_dict=state_dict, is_main_process=self.args.should_save, selected_adapters=actor_adapters
        )
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
