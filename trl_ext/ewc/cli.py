"""`trl-ext fisher R.yaml --output fisher.safetensors`: precompute a recipe's EWC Fisher to a file."""

from __future__ import annotations

import sys
from pathlib import Path


def fisher_cli(argv: list[str] | None = None) -> int:
    """`trl-ext fisher RECIPE.yaml --output FILE.safetensors [--overwrite] [--key value ...]`.

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments after `fisher`. Defaults to `sys.argv[1:]`.

    Returns:
        `int`: the exit code: 0 on success, 2 for a bad recipe or output path.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="trl-ext fisher",
        description="Estimate the diagonal Fisher of the recipe's LoRA-adapted base weights (ewc_fisher_* keys) and "
        "write it to a safetensors file that recipes load with ewc_fisher_path. Extra --key value pairs override "
        "recipe keys.",
    )
    parser.add_argument("recipe", help="recipe YAML (its model, LoRA targets and ewc_fisher_* keys are used)")
    parser.add_argument("--output", required=True, help="Fisher file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args, overrides = parser.parse_known_args(argv)

    from trl_ext.recipe import RecipeError, load_recipe
    from trl_ext.runtime import apply_runtime

    output = Path(args.output)
    try:
        if output.suffix != ".safetensors":
            raise RecipeError(f"--output {output} must end in .safetensors.")
        if output.exists() and not args.overwrite:
            raise RecipeError(f"--output {output} exists; pass --overwrite or choose another path.")
        recipe = apply_runtime(load_recipe(args.recipe, overrides))
        if not recipe.model.use_peft:
            raise RecipeError(
                f"{args.recipe} has use_peft: false; the EWC Fisher is over LoRA-adapted modules, so "
                "set use_peft: true (and lora_target_modules)."
            )
        from trl_ext.model_source import check_model_source

        check_model_source(recipe.model.model_name_or_path, recipe.model.model_revision)
    except RecipeError as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2

    from peft import get_peft_model

    from trl_ext.ewc.data import estimate_recipe_fisher
    from trl_ext.ewc.io import model_identity, save_fisher
    from trl_ext.modeling import load_model_and_tokenizer

    config = recipe.training
    model, tokenizer, peft_config = load_model_and_tokenizer(recipe.model, config)
    model = get_peft_model(model, peft_config)
    estimate = estimate_recipe_fisher(model, config, tokenizer)
    save_fisher(output, estimate, model_identity(model), revision=recipe.model.model_revision)
    agreement = "n/a" if estimate.split_half_agreement is None else f"{estimate.split_half_agreement:.4f}"
    print(
        f"Fisher ({estimate.mode}, {estimate.fisher_type}) of {len(estimate.tensors)} tensors from "
        f"{estimate.n_samples} sequences / {estimate.n_tokens} tokens in {estimate.seconds:.1f}s; "
        f"split-half agreement {agreement}; written to {output}"
    )
    return 0
