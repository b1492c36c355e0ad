"""Model and tokenizer loading: full precision, LoRA, QLoRA (4-bit NF4) and 8-bit.

The loader reads TRL's own `trl.ModelConfig`, so a recipe uses TRL's keys (`load_in_4bit`, `lora_r`,
`lora_target_modules`, ...). What it adds over TRL's `get_quantization_config`/`get_peft_config`:

- 4-bit compute dtype follows the hardware: bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU.
- `lora_target_modules` accepts presets: `all-linear` (the default when unset), `attention`, `mlp`.
- k-bit preparation (`prepare_model_for_kbit_training`) for quantized bases, with gradient checkpointing as the
  training arguments say.
- one full copy of the model per process under DDP: `device_map={"": local_process_index}` on GPUs.
- `builtin:<name>` resolves to a model shipped inside the package (`builtin:tiny-chat`), so tests and
  quickstart recipes never touch the network.

Merging an adapter into its base lives in `trl_ext.merge`.
"""

from __future__ import annotations

import copy
import logging
import os

import torch

# DATA_DIR, BUILTIN_PREFIX and resolve_builtin moved to trl_ext.assets; re-exported here for one release.
from trl_ext.assets import BUILTIN_PREFIX, DATA_DIR, resolve_builtin  # noqa: F401

logger = logging.getLogger(__name__)


#: LoRA target presets. Module names cover Llama/Qwen/Mistral-style decoders; `all-linear` is PEFT's own preset
#: (every linear layer except the output head).
LORA_TARGET_PRESETS: dict[str, str | list[str]] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


#: Environment variable that sets `compute_dtype()` (`bfloat16`, `float16`, `float32`): `trl-ext memcheck --device cpu`
#: runs a CPU trace with the dtypes the recipe would use on its GPU.
COMPUTE_DTYPE_ENV = "TRL_EXT_COMPUTE_DTYPE"


def compute_dtype() -> torch.dtype:
    """The dtype 4-bit layers compute in.

    Returns:
        `torch.dtype`: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU; the `TRL_EXT_COMPUTE_DTYPE`
        environment variable, when set, decides instead.
    """
    forced = os.environ.get(COMPUTE_DTYPE_ENV)
    if forced:
        return resolve_dtype(forced) if forced != "auto" else torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """The torch dtype a recipe's `dtype` key names.

    Args:
        dtype (`str`, `torch.dtype` or `None`):
            `auto` or `None` (the hardware's `compute_dtype()`), `bfloat16`, `float16`, `float32`, or a torch dtype.

    Returns:
        `torch.dtype`: the dtype to load the weights in.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return compute_dtype()
    if dtype in ("bfloat16", "float16", "float32"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be one of auto, bfloat16, float16, float32; got {dtype!r}.")


def get_quantization_config(model_args):
    """TRL's `trl.get_quantization_config` with the 4-bit compute dtype chosen by the hardware.

    TRL computes 4-bit layers in `model_args.dtype` (the weights' dtype, `float32` by default, which wastes a GPU's
    bf16 units and fails on `auto`); here they compute in `compute_dtype()`: bf16 where the GPU supports it, fp16 on
    older GPUs, fp32 on CPU. Setting both `load_in_4bit` and `load_in_8bit` is an error (TRL picks 4-bit).

    Args:
        model_args (`trl.ModelConfig`):
            The recipe's model keys (`load_in_4bit`, `load_in_8bit`, `bnb_4bit_quant_type`, `use_bnb_nested_quant`,
            `bnb_4bit_quant_storage`).

    Returns:
        `transformers.BitsAndBytesConfig` or `None`: NF4 (by default) 4-bit, 8-bit, or `None` when neither is set.
    """
    import trl

    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit are both set; choose one.")
    trl_args = copy.copy(model_args)  # a copy without re-running `ModelConfig.__post_init__`
    trl_args.dtype = compute_dtype()
    return trl.get_quantization_config(trl_args)


def lora_target_modules(targets: list[str] | str | None) -> str | list[str]:
    """Expand a LoRA target preset, or pass a list of module names through.

    Args:
        targets (`list[str]`, `str` or `None`):
            `lora_target_modules` as a recipe gives it: a preset name (`all-linear`, `attention`, `mlp`), alone or
            in a one-element list, a list of module names, or `None` (`all-linear`).

    Returns:
        `str` or `list[str]`: PEFT's `all-linear` or the module names to adapt.
    """
    if targets is None:
        return LORA_TARGET_PRESETS["all-linear"]
    if isinstance(targets, str):
        targets = [targets]
    if len(targets) == 1 and targets[0] in LORA_TARGET_PRESETS:
        return LORA_TARGET_PRESETS[targets[0]]
    return list(targets)


def get_peft_config(model_args):
    """TRL's `trl.get_peft_config` with LoRA target presets.

    TRL passes `lora_target_modules` to PEFT as written, so `None` means PEFT's per-architecture default (only
    `q_proj` and `v_proj` on Llama) and `attention`/`mlp` name no module. Here `None` means `all-linear` (every linear
    layer but the output head, as QLoRA does) and the presets expand as `lora_target_modules` says.

    Args:
        model_args (`trl.ModelConfig`):
            The recipe's model keys (`use_peft`, `lora_r`, `lora_alpha`, `lora_target_modules`, ...).

    Returns:
        `peft.LoraConfig` or `None`: `None` when `use_peft` is false.
    """
    import trl

    trl_args = copy.copy(model_args)  # a copy without re-running `ModelConfig.__post_init__`
    trl_args.lora_target_modules = lora_target_modules(model_args.lora_target_modules)
    return trl.get_peft_config(trl_args)


def device_map_for_process():
    """Where this process loads its model: one full copy per process.

    Returns:
        `dict` or `None`: `{"": local_process_index}` (the local GPU) under (multi-)GPU runs, `None` (CPU) otherwise.
    """
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return None


def load_tokenizer(model_name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    """Load a model's tokenizer, with the EOS token as pad token when it has none.

    Args:
        model_name_or_path (`str`):
            Hub id, local directory or `builtin:<name>`.
        revision (`str`, *optional*, defaults to `"main"`):
            Hub revision.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the tokenizer's own code from the Hub.

    Returns:
        `PreTrainedTokenizerBase`: the tokenizer.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_builtin(model_name_or_path), revision=revision, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args, training_args=None, model_class=None, fp32_activations: bool = False, **model_kwargs):
    """Load the base model as the recipe says: quantized or not, on the right device, ready for LoRA.

    The LoRA adapter itself is not attached here: the TRL trainer does that from the `peft_config` returned by
    `get_peft_config`, so TRL's PEFT handling (reference = adapters disabled, adapter saving) applies unchanged.

    Args:
        model_args (`trl.ModelConfig`):
            The recipe's model keys.
        training_args (`transformers.TrainingArguments`, *optional*):
            The method's config: `trust_remote_code`, `model_init_kwargs`, `gradient_checkpointing` and
            `gradient_checkpointing_kwargs` are read from it.
        model_class (`type`, *optional*):
            The transformers auto class to load with. Defaults to `AutoModelForCausalLM`.
        fp32_activations (`bool`, *optional*, defaults to `False`):
            Keep k-bit preparation's fp32 embeddings and norms (an fp32 residual stream); by default they go back to
            the compute dtype (`lean_activations`).
        **model_kwargs:
            More arguments of `from_pretrained` (`num_labels=1` for a reward model).

    Returns:
        `PreTrainedModel`: the base model, k-bit prepared when quantized.
    """
    from transformers import AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    quantization_config = get_quantization_config(model_args)
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
        attn_implementation=model_args.attn_implementation,
        dtype=resolve_dtype(model_args.dtype),
    )
    extra = getattr(training_args, "model_init_kwargs", None) or {}
    kwargs.update(extra)
    kwargs.update(model_kwargs)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = device_map_for_process()
    elif torch.cuda.is_available() and "device_map" not in kwargs:
        kwargs["device_map"] = device_map_for_process()
    model = model_class.from_pretrained(resolve_builtin(model_args.model_name_or_path), **kwargs)
    if quantization_config is not None:
        from peft import prepare_model_for_kbit_training

        gradient_checkpointing = bool(getattr(training_args, "gradient_checkpointing", False))
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=getattr(training_args, "gradient_checkpointing_kwargs", None),
        )
        if not fp32_activations:
            lean_activations(model)
    return model


def lean_activations(model) -> int:
    """Undo k-bit preparation's fp32 upcast of the input embeddings and norm weights, in place.

    PEFT's `prepare_model_for_kbit_training` upcasts every non-quantized weight to fp32, which makes the residual
    stream, every norm output, every 4-bit linear output (bitsandbytes returns its input's dtype) and the KV cache
    fp32: about twice the activation memory of a 16-bit stream. Here the input embeddings and the norm weights go back
    to the 4-bit compute dtype (`compute_dtype()`), as torchtune, LitGPT and unsloth keep them; the norm statistics
    are still computed in fp32 inside the HF norm layers, the trainable adapters keep their dtype, and an untied output
    head stays fp32 (TRL's fused LM head casts it tile by tile). Such a head gets a forward pre-hook that casts its
    input to fp32: the passes that run the model without the trainer's autocast (the EWC Fisher pass, the forgetting
    monitor, generation) would otherwise fail on a bf16 input to an fp32 linear; under autocast the head still runs in
    the compute dtype. A no-op when the compute dtype is fp32 (CPU).

    Args:
        model (`PreTrainedModel`): a k-bit prepared model.

    Returns:
        `int`: how many tensors changed dtype.
    """
    target = compute_dtype()
    if target == torch.float32:
        return 0
    tensors = [model.get_input_embeddings().weight]
    for module in model.modules():
        if "norm" in type(module).__name__.lower():
            tensors += [p for p in module.parameters(recurse=False)]
    changed = 0
    for param in tensors:
        if param.dtype == torch.float32 and (param is tensors[0] or not param.requires_grad):
            param.data = param.data.to(target)
            changed += 1
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None and head.weight.dtype == torch.float32:
        head.register_forward_pre_hook(_input_to_weight_dtype)
    return changed


def _input_to_weight_dtype(module, args):
    return (args[0].to(module.weight.dtype), *args[1:]) if args and torch.is_tensor(args[0]) else None


def load_model_and_tokenizer(
    model_args, training_args=None, model_class=None, fp32_activations: bool = False, **model_kwargs
):
    """Everything a TRL trainer needs from the recipe's model keys.

    Args:
        model_args (`trl.ModelConfig`):
            The recipe's model keys.
        training_args (`transformers.TrainingArguments`, *optional*):
            The method's config (see `load_model`).
        model_class (`type`, *optional*):
            The transformers auto class to load with. Defaults to `AutoModelForCausalLM`.
        fp32_activations (`bool`, *optional*, defaults to `False`):
            See `load_model`.
        **model_kwargs:
            More arguments of `from_pretrained`.

    Returns:
        `tuple`: `(model, tokenizer, peft_config)`; `peft_config` is `None` without `use_peft`.
    """
    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
    )
    template_path = getattr(training_args, "chat_template_path", None)
    if template_path and not tokenizer.chat_template:
        from trl_ext.model_source import read_chat_template

        tokenizer.chat_template = read_chat_template(template_path)
    model = load_model(
        model_args, training_args, model_class=model_class, fp32_activations=fp32_activations, **model_kwargs
    )
    return model, tokenizer, get_peft_config(model_args)


def align_adapter_dtype(model) -> int:
    """Cast the trainable adapter weights of a quantized model to the 4-bit compute dtype, in place.

    TRL casts QLoRA adapter weights to bf16 (the QLoRA paper's recipe for GPUs). On CPU, or on a GPU without bf16,
    the adapters then run in a dtype the layer does not compute in; this puts them back to `compute_dtype()`.

    Args:
        model (`PreTrainedModel` or `PeftModel`):
            The model; nothing changes unless it is loaded in 4 or 8 bits.

    Returns:
        `int`: how many tensors changed dtype.
    """
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return 0
    target = compute_dtype()
    changed = 0
    for _, param in model.named_parameters():
        if param.requires_grad and param.dtype != target and param.is_floating_point():
            param.data = param.data.to(target)
            changed += 1
    return changed


def eval_mode(model) -> None:
    """`model.eval()` (dropout and LoRA dropout off), safe for bitsandbytes 4-bit layers.

    bitsandbytes 4-bit linears keep their training flag: on CPU, a gradient-free forward of a 4-bit linear in eval
    mode repacks its weight for inference in a way that breaks every later training forward. The flag changes nothing
    else in those layers (they hold no dropout). Restore training mode with `model.train()` as usual.

    Args:
        model (`torch.nn.Module`):
            The model to put in evaluation mode, in place.
    """
    model.eval()
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # pragma: no cover
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.training = True
