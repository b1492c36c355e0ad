"""Model and tokenizer loading: full precision, LoRA, QLoRA (4-bit NF4) and 8-bit, plus adapter merge/export.

The loader reads TRL's own :class:`trl.ModelConfig`, so a recipe uses TRL's keys (``load_in_4bit``, ``lora_r``,
``lora_target_modules``, ...). What it adds over TRL's ``get_quantization_config``/``get_peft_config``:

- 4-bit compute dtype follows the hardware: bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU.
- ``lora_target_modules`` accepts presets: ``all-linear`` (the default when unset), ``attention``, ``mlp``.
- k-bit preparation (``prepare_model_for_kbit_training``) for quantized bases, with gradient checkpointing as the
  training arguments say.
- one full copy of the model per process under DDP: ``device_map={"": local_process_index}`` on GPUs.
- ``builtin:<name>`` resolves to a model shipped inside the package (``builtin:tiny-chat``), so tests and
  quickstart recipes never touch the network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

# Deprecated here: import DATA_DIR, BUILTIN_PREFIX and resolve_builtin from trl_ext.assets (kept for one release).
from trl_ext.assets import BUILTIN_PREFIX, DATA_DIR, resolve_builtin  # noqa: F401

logger = logging.getLogger(__name__)


#: LoRA target presets. Module names cover Llama/Qwen/Mistral-style decoders; ``all-linear`` is PEFT's own preset
#: (every linear layer except the output head).
LORA_TARGET_PRESETS: dict[str, str | list[str]] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


def compute_dtype() -> torch.dtype:
    """The dtype 4-bit layers compute in: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``auto``/``None`` -> :func:`compute_dtype`; a name such as ``bfloat16`` -> the torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return compute_dtype()
    if dtype in ("bfloat16", "float16", "float32"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be one of auto, bfloat16, float16, float32; got {dtype!r}.")


def get_quantization_config(model_args):
    """BitsAndBytes config for ``load_in_4bit`` (NF4 by default) or ``load_in_8bit``; None otherwise."""
    from transformers import BitsAndBytesConfig

    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit are both set; choose one.")
    if model_args.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=compute_dtype(),
            bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage,
        )
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def lora_target_modules(targets: list[str] | str | None) -> str | list[str]:
    """Expand a preset name (``all-linear``, ``attention``, ``mlp``) or pass a module-name list through."""
    if targets is None:
        return LORA_TARGET_PRESETS["all-linear"]
    if isinstance(targets, str):
        targets = [targets]
    if len(targets) == 1 and targets[0] in LORA_TARGET_PRESETS:
        return LORA_TARGET_PRESETS[targets[0]]
    return list(targets)


def get_peft_config(model_args):
    """A :class:`peft.LoraConfig` from TRL's ``ModelConfig`` LoRA fields, or None when ``use_peft`` is false."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    kwargs = {}
    if model_args.lora_target_parameters is not None:
        kwargs["target_parameters"] = model_args.lora_target_parameters
    return LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=lora_target_modules(model_args.lora_target_modules),
        bias="none",
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        modules_to_save=model_args.lora_modules_to_save,
        **kwargs,
    )


def device_map_for_process():
    """One full model per process: the local GPU under (multi-)GPU runs, plain CPU otherwise."""
    if torch.cuda.is_available():
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return None


def load_tokenizer(model_name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_builtin(model_name_or_path), revision=revision, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_args, training_args=None, model_class=None):
    """Load the base model as the recipe says: quantized or not, on the right device, ready for LoRA.

    The LoRA adapter itself is not attached here: the TRL trainer does that from the ``peft_config`` returned by
    :func:`get_peft_config`, so TRL's PEFT handling (reference = adapters disabled, adapter saving) applies unchanged.
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
    return model


def load_model_and_tokenizer(model_args, training_args=None, model_class=None):
    """``(model, tokenizer, peft_config)`` for a TRL trainer, from TRL's ``ModelConfig``."""
    tokenizer = load_tokenizer(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
    )
    model = load_model(model_args, training_args, model_class=model_class)
    return model, tokenizer, get_peft_config(model_args)


def align_adapter_dtype(model) -> int:
    """Cast trainable adapter weights to the 4-bit compute dtype; returns how many tensors changed.

    TRL casts QLoRA adapter weights to bf16 (the QLoRA paper's recipe for GPUs). On CPU, or on a GPU without bf16,
    the adapters then run in a dtype the layer does not compute in; this puts them back to :func:`compute_dtype`.
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


# --------------------------------------------------------------------------------------------------------------
# merge / export
# --------------------------------------------------------------------------------------------------------------

MERGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def merge_adapter(adapter_path: str, output_dir: str, dtype: str = "bf16", base_model: str | None = None) -> str:
    """Merge a (Q)LoRA adapter into its base and save a plain model (and tokenizer) in ``dtype``.

    The base is always loaded unquantized, whatever the adapter was trained on: merging into 4-bit weights would
    round the merged weights to NF4 again. ``base_model`` defaults to the adapter's ``base_model_name_or_path``.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if dtype not in MERGE_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(MERGE_DTYPES)}; got {dtype!r}.")
    adapter_config = Path(adapter_path) / "adapter_config.json"
    if not adapter_config.is_file():
        raise FileNotFoundError(
            f"{adapter_path} has no adapter_config.json: pass the directory a trl-ext/PEFT run saved its adapter to."
        )
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new --output directory.")
    base = base_model or json.loads(adapter_config.read_text())["base_model_name_or_path"]
    base = resolve_builtin(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=MERGE_DTYPES[dtype])
    model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    model.save_pretrained(out)
    tokenizer_source = adapter_path if (Path(adapter_path) / "tokenizer_config.json").is_file() else base
    load_tokenizer(tokenizer_source).save_pretrained(out)
    return str(out)


def merge_cli(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="trl-ext merge", description="Merge a (Q)LoRA adapter into its base model and save a plain model."
    )
    parser.add_argument("adapter", help="directory with adapter_config.json (a training run's output_dir)")
    parser.add_argument("--output", required=True, help="new directory for the merged model")
    parser.add_argument("--dtype", default="bf16", choices=sorted(MERGE_DTYPES), help="dtype of the saved weights")
    parser.add_argument("--base-model", default=None, help="base model (default: the one the adapter names)")
    args = parser.parse_args(argv)
    path = merge_adapter(args.adapter, args.output, dtype=args.dtype, base_model=args.base_model)
    print(f"merged model written to {path}")
    return 0
