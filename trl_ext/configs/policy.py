"""The starting-policy key of the preference and RL methods (`sft_adapter_path`), and its file check.

A policy that starts from an SFT adapter is trained from that adapter, and its reference is the same adapter loaded a
second time, frozen, on the same base (not the base with adapters off): the KL to the reference is zero at step 0.
Ground floor: the check reads `adapter_config.json` and tensor names, never weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trl_ext.assets import resolve_builtin

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def inspect_policy_adapter(path: str, key: str = "sft_adapter_path") -> dict:
    """Check that `path` is a LoRA adapter directory of a causal LM (what `method: sft` with LoRA writes).

    Args:
        path (`str`):
            The adapter directory.
        key (`str`, *optional*, defaults to `"sft_adapter_path"`):
            The recipe key named in errors.

    Returns:
        `dict`: The adapter's `adapter_config.json`.

    Raises:
        ValueError: Naming the problem and the fix (a recipe reports it as a recipe error, before weights load).
    """
    directory = Path(path)
    if not directory.exists():
        raise ValueError(
            f"{key} {path} does not exist. Point it at the output_dir of an SFT run with use_peft: true "
            f"(it holds {ADAPTER_CONFIG}), or remove {key} to start from the base model."
        )
    weights = [name for name in ADAPTER_WEIGHTS if (directory / name).is_file()]
    if not directory.is_dir() or not (directory / ADAPTER_CONFIG).is_file() or not weights:
        raise ValueError(
            f"{key} {path} is not a PEFT adapter directory (it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS[0]}). "
            "Give the output_dir of an SFT run with use_peft: true; a fully fine-tuned model goes in "
            "model_name_or_path instead."
        )
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{key} {path} is a {config.get('peft_type')} adapter; only LoRA adapters can be loaded twice on one "
            "base as policy and reference. Train the SFT stage with use_peft: true (LoRA)."
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise ValueError(
            f"{key} {path} is a {config.get('task_type')} adapter, not a causal LM policy (a reward model is a "
            "SEQ_CLS adapter: it belongs in reward_adapter_path). Give the output_dir of a method: sft run."
        )
    return config


def same_model(a: str, b: str) -> bool:
    """Whether two model names (`builtin:<name>`, paths or Hub ids) name the same model."""
    a, b = resolve_builtin(a), resolve_builtin(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/") == b.rstrip("/")


def check_policy_adapter(path: str, model_name_or_path: str | None) -> dict:
    """`inspect_policy_adapter`, and the adapter must have been trained on `model_name_or_path` (files only).

    Args:
        path (`str`):
            The adapter directory (`sft_adapter_path`).
        model_name_or_path (`str`, *optional*):
            The recipe's model; `None` skips the base check.

    Returns:
        `dict`: The adapter's `adapter_config.json`.

    Raises:
        ValueError: Naming the problem and the fix.
    """
    config = inspect_policy_adapter(path)
    base = config.get("base_model_name_or_path")
    if model_name_or_path is not None and base and not same_model(base, model_name_or_path):
        raise ValueError(
            f"sft_adapter_path {path} was trained on {base!r}, but the recipe's model is {model_name_or_path!r}: a "
            "LoRA adapter only fits the base it was trained on. Use the SFT run's model_name_or_path (if both are the "
            "same weights under another name, set base_model_name_or_path in its adapter_config.json)."
        )
    return config


@dataclass
class StartingPolicyArguments:
    """The starting-policy key shared by DPO, KTO, GRPO and PPO configs.

    Args:
        sft_adapter_path (`str`, *optional*):
            A LoRA adapter of the recipe's model (for example the `output_dir` of a `method: sft` run with
            `use_peft: true`). The trainable policy starts from it, and the reference is the same adapter loaded a
            second time as a frozen adapter named `ref` on the same base, so the KL to the reference is zero at step
            0. The adapter's own LoRA configuration replaces the recipe's `lora_*` keys. Without it the policy is a
            fresh adapter and the reference is the base model (adapters off).
    """

    sft_adapter_path: str | None = field(
        default=None,
        metadata={"help": "LoRA adapter the policy starts from; a frozen copy of it is the reference."},
    )

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.sft_adapter_path is not None:
            inspect_policy_adapter(self.sft_adapter_path)  # file checks only: fails before any weights load


def document_policy_fields(cls):
    """Class decorator: append `StartingPolicyArguments`' documented fields to a config's docstring."""
    doc = StartingPolicyArguments.__doc__ or ""
    fields_doc = doc[doc.index("    Args:\n") + len("    Args:\n") :]
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + fields_doc
    return cls
