"""Merge/export: fold a (Q)LoRA adapter into its base model and save a plain model, and the `trl-ext merge` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from trl_ext.assets import resolve_builtin
from trl_ext.model_source import check_model_source
from trl_ext.modeling import load_tokenizer

MERGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def merge_adapter(adapter_path: str, output_dir: str, dtype: str = "bf16", base_model: str | None = None) -> str:
    """Merge a (Q)LoRA adapter into its base and save a plain model (and tokenizer) in `dtype`.

    The base is always loaded unquantized, whatever the adapter was trained on: merging into 4-bit weights would
    round the merged weights to NF4 again.

    Args:
        adapter_path (`str`):
            Directory holding `adapter_config.json` (a training run's `output_dir`).
        output_dir (`str`):
            New (or empty) directory the merged model and its tokenizer are written to.
        dtype (`str`, *optional*, defaults to `"bf16"`):
            dtype of the saved weights: `bf16`, `fp16` or `fp32`.
        base_model (`str`, *optional*):
            Base model to merge into. Defaults to the adapter's `base_model_name_or_path`.

    Returns:
        `str`: the directory the merged model was written to.
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
    base = resolve_builtin(
        check_model_source(base, key="--base-model" if base_model else f"the base of {adapter_path}")
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=MERGE_DTYPES[dtype])
    model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    model.save_pretrained(out)
    tokenizer_source = adapter_path if (Path(adapter_path) / "tokenizer_config.json").is_file() else base
    load_tokenizer(tokenizer_source).save_pretrained(out)
    return str(out)


def merge_cli(argv: list[str] | None = None) -> int:
    """`trl-ext merge ADAPTER --output DIR [--dtype bf16] [--base-model NAME]`.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments after `merge`. Defaults to `sys.argv[1:]`.

    Returns:
        `int`: the exit code, 0 on success.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="trl-ext merge", description="Merge a (Q)LoRA adapter into its base model and save a plain model."
    )
    parser.add_argument("adapter", help="directory with adapter_config.json (a training run's output_dir)")
    parser.add_argument("--output", required=True, help="new directory for the merged model")
    parser.add_argument("--dtype", default="bf16", choices=sorted(MERGE_DTYPES), help="dtype of the saved weights")
    parser.add_argument("--base-model", default=None, help="base model (default: the one the adapter names)")
    args = parser.parse_args(argv)
    try:
        path = merge_adapter(args.adapter, args.output, dtype=args.dtype, base_model=args.base_model)
    except (OSError, ValueError, KeyError) as err:  # RecipeError, FileNotFoundError and FileExistsError included
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    print(f"merged model written to {path}")
    return 0
