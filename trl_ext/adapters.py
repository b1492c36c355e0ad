"""LoRA adapters as roles on one base: the starting policy (`sft_adapter_path`) and its frozen reference copy, adapter
copies and restores, and the `builtin:` base name an adapter records.
"""

from __future__ import annotations

import copy

from trl_ext.assets import BUILTIN_PREFIX, resolve_builtin


def load_starting_policy(model, adapter_path: str, model_name_or_path: str | None = None):
    """Wrap `model` in the LoRA adapter it starts from (`sft_adapter_path`), trainable, as the `default` adapter.

    TRL's DPO, KTO and GRPO (`beta > 0`) trainers, given a `PeftModel` and no `peft_config`, add a frozen `ref` copy
    of the `default` adapter and take their reference log-probabilities with it; PPO does the same with
    `add_reference_adapter`. So the reference is the starting policy, and the KL to it is zero at step 0.

    Args:
        model (`PreTrainedModel`):
            The base model as `load_model` returns it (k-bit prepared when quantized).
        adapter_path (`str`):
            The adapter directory (checked by `trl_ext.configs.policy.inspect_policy_adapter`).
        model_name_or_path (`str`, *optional*):
            The recipe's model; when given, the adapter must have been trained on it.

    Returns:
        `peft.PeftModel`: the model with the adapter loaded as `default`, its LoRA weights trainable.

    Raises:
        ValueError: the adapter was trained on another base model.
    """
    from peft import PeftModel

    from trl_ext.configs.policy import check_policy_adapter

    check_policy_adapter(adapter_path, model_name_or_path)
    return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)


def add_reference_adapter(model, name: str = "ref", source: str = "default") -> None:
    """Add a frozen copy of adapter `source` named `name` to a `PeftModel`, in place (what TRL's DPO trainer does
    for a `PeftModel` it is given): the reference that equals the starting policy.

    Args:
        model (`peft.PeftModel`):
            The model holding adapter `source`.
        name (`str`, *optional*, defaults to `"ref"`):
            The new adapter's name (`ref` is the name TRL's trainers and PPO look for).
        source (`str`, *optional*, defaults to `"default"`):
            The adapter to copy.
    """
    active = model.active_adapter
    model.add_adapter(name, copy.deepcopy(model.peft_config[source]))
    model.set_adapter(active)
    copy_adapter(model, source, name)


def copy_adapter(model, source: str, target: str) -> int:
    """Make adapter `target` an exact, frozen copy of adapter `source` (values and dtype), in place.

    Args:
        model (`peft.PeftModel`):
            The model holding both adapters (same LoRA configuration).
        source (`str`):
            The adapter copied.
        target (`str`):
            The adapter overwritten; its parameters stop requiring gradients.

    Returns:
        `int`: how many tensors were copied.
    """
    params = dict(model.named_parameters())
    copied = 0
    for param_name, param in params.items():
        if f".{source}." in param_name:
            other = params[param_name.replace(f".{source}.", f".{target}.")]
            other.data = param.detach().clone()
            other.requires_grad_(False)
            copied += 1
    return copied


def restore_adapter_weights(model, adapter_path: str, adapter_name: str = "default") -> None:
    """Load the weights saved in `adapter_path` into adapter `adapter_name` again, exactly (after a trainer cast them).

    TRL's trainers cast a quantized model's trainable adapter weights to bf16; for an adapter the policy starts from,
    that rounds the starting policy itself. This puts the saved values back (in the parameters' current dtype).

    Args:
        model (`peft.PeftModel`):
            The model holding `adapter_name`.
        adapter_path (`str`):
            The adapter directory it was loaded from.
        adapter_name (`str`, *optional*, defaults to `"default"`):
            The adapter to restore.
    """
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    params = dict(model.named_parameters())
    weights = load_peft_weights(adapter_path, device="cpu")
    for name, param in params.items():
        if f".{adapter_name}." in name:
            param.data = param.data.float()  # full precision before the saved values go in
    set_peft_model_state_dict(model, weights, adapter_name=adapter_name)


def record_builtin_base(adapter_dir: str, model_name_or_path: str) -> bool:
    """Make a saved adapter name its bundled base as ``builtin:<name>`` instead of this machine's path.

    PEFT records the loaded folder as ``base_model_name_or_path``; rewritten after saving, because while PEFT saves
    it looks the base up by that name (a ``builtin:`` name would send it to the Hub). `trl_ext.merge` and
    ``trl-ext eval-rewrite`` resolve the name.

    Args:
        adapter_dir (`str`):
            The folder the adapter was saved to.
        model_name_or_path (`str`):
            The recipe's model; nothing changes unless it is a ``builtin:`` name.

    Returns:
        `bool`: whether ``adapter_config.json`` was rewritten.
    """
    import json
    from pathlib import Path

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not str(model_name_or_path).startswith(BUILTIN_PREFIX) or not config_file.is_file():
        return False
    config = json.loads(config_file.read_text())
    if config.get("base_model_name_or_path") != resolve_builtin(model_name_or_path):
        return False
    config["base_model_name_or_path"] = model_name_or_path
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True
