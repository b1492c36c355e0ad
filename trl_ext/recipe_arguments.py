"""`RecipeArguments`: a recipe's script-level keys (TRL's `ScriptArguments` fields plus trl-ext's own), and
`ChatTemplateArguments`. A top-level module, not part of `trl_ext.configs`, so that parsing a recipe imports no TRL
until a method's config is needed (the CLI silences known library messages before TRL loads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecipeArguments:
    """Script-level recipe keys: TRL's ``ScriptArguments`` fields plus trl-ext's own.

    Args:
        method (`str`):
            Training method: ``dpo``, ``grpo``, ``kto``, ``ppo``, ``sft`` or ``reward``.
        dataset_name (`str`, *optional*):
            Dataset to load: ``builtin:<name>`` for a bundled one, a local file or directory (JSON/JSONL/CSV/Parquet),
            or a Hub dataset id. Ignored if ``datasets`` (TRL's mixture) is given.
        dataset_config (`str`, *optional*):
            Dataset configuration name (``name`` of ``datasets.load_dataset``).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate on when ``eval_strategy`` is not ``no``.
        dataset_streaming (`bool`, *optional*, defaults to `False`):
            Stream the dataset.
        ignore_bias_buffers (`bool`, *optional*, defaults to `False`):
            TRL's DDP workaround for boolean buffers.
        accelerate_config (`str`, *optional*):
            accelerate config file ``trl-ext train`` launches with when none is given on the command line; a relative
            path is looked up from the current directory, then from the recipe's directory.
        reward_funcs (`list[str]`, *optional*):
            GRPO/PPO reward functions: TRL's names (``accuracy_reward``, ``think_format_reward``, ...) or dotted import
            paths. A class is instantiated with the matching entry of ``reward_kwargs``.
        reward_kwargs (`dict`, *optional*):
            Constructor arguments for reward classes, keyed by the entry of ``reward_funcs`` (full path or class name).
        reward_model_name_or_path (`str`, *optional*):
            A sequence-classification reward model (path or Hub id), used with the reward functions.
        skip_memory_check (`bool`, *optional*, defaults to `False`):
            On a GPU, ``trl-ext train`` refuses a recipe that ``trl-ext estimate`` predicts not to fit the visible GPU
            memory, before loading weights. Set true to train anyway.
        kbit_fp32_activations (`bool`, *optional*, defaults to `False`):
            Under QLoRA/8-bit, keep PEFT's fp32 embeddings and norm weights, so the residual stream, norm outputs,
            4-bit linear outputs and KV cache are fp32 (the behaviour before lean activations; about twice the
            activation memory). By default they are in the compute dtype (bf16/fp16).
    """

    method: str | None = field(default=None, metadata={"help": "Training method: dpo, grpo, kto, ppo, sft or reward."})
    dataset_name: str | None = field(default=None, metadata={"help": "builtin:<name>, a local path or a Hub id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset."})
    ignore_bias_buffers: bool = field(default=False, metadata={"help": "TRL's DDP workaround for bool buffers."})
    accelerate_config: str | None = field(default=None, metadata={"help": "accelerate config for `trl-ext train`."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": "Reward functions (names/import paths)."})
    reward_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Constructor kwargs for reward classes, keyed by reward_funcs entry."}
    )
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model path or Hub id."})
    skip_memory_check: bool = field(
        default=False, metadata={"help": "Train even if the memory estimate says the recipe does not fit the GPU."}
    )
    kbit_fp32_activations: bool = field(
        default=False, metadata={"help": "QLoRA: keep an fp32 residual stream (k-bit prep's upcast) instead of bf16."}
    )


@dataclass
class ChatTemplateArguments:
    """`chat_template_path` for the methods whose TRL config lacks it (TRL's `SFTConfig` and `RewardConfig` have it).

    Args:
        chat_template_path (`str`, *optional*):
            A chat template for a tokenizer without one: a Jinja file, or a tokenizer folder (or `builtin:` model)
            whose template to use. A conversational dataset needs a chat template; this is checked before any weight
            loads, and the template is set on the tokenizer when it loads.
    """

    chat_template_path: str | None = field(
        default=None, metadata={"help": "Jinja chat template file (or tokenizer folder) for a tokenizer without one."}
    )
