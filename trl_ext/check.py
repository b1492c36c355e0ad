"""`trl-ext check RECIPE [--key value ...]`: a dry run. Everything `trl-ext train` checks before it starts a process
(keys, types, value ranges, rewards, output_dir, the model's whereabouts, the dataset and its columns, the chat
template), then the memory estimate. No weight loads; a local or bundled dataset is read, nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from trl_ext.recipe import RecipeError, load_recipe
from trl_ext.runtime import apply_runtime


def check_recipe(path: str, overrides: list[str] | None = None, gpu_memory_gb: float = 24.0) -> list[str]:
    """Validate a recipe as `trl-ext train` does before launching, and estimate its memory.

    Args:
        path (`str`):
            The recipe YAML.
        overrides (`list[str]`, *optional*):
            ``--key value`` overrides.
        gpu_memory_gb (`float`, *optional*, defaults to `24.0`):
            GPU memory the estimate is judged against.

    Returns:
        `list[str]`: the report, one line per check.

    Raises:
        RecipeError: the first problem found, naming the key and the fix.
    """
    from trl_ext.data.loading import load_datasets
    from trl_ext.memory import estimate_memory
    from trl_ext.train import preflight

    recipe = preflight(apply_runtime(load_recipe(path, overrides)))
    lines = [f"recipe {path}: method {recipe.method}, keys and values valid"]
    lines.append(f"model {recipe.model.model_name_or_path}: found")
    if recipe.script.dataset_streaming:
        lines.append(f"dataset {recipe.script.dataset_name}: streamed, columns checked when training starts")
    else:
        train, evaluation = load_datasets(recipe)
        label = recipe.script.dataset_name or "datasets:"
        lines.append(f"dataset {label}: {len(train)} training rows, columns {', '.join(train.column_names)}")
        if evaluation is not None:
            lines.append(f"evaluation split: {len(evaluation)} rows")
    lines.append(f"output_dir {recipe.training.output_dir}: writable")
    try:
        estimate = estimate_memory(recipe, gpu_memory_gb=gpu_memory_gb)
    except (FileNotFoundError, ValueError) as err:  # no config.json to read (a Hub model not in the cache)
        lines.append(f"memory estimate: not available ({err})")
    else:
        verdict = "fits" if estimate.fits else "does NOT fit"
        lines.append(
            f"memory estimate: peak {estimate.peak_gib:.1f} GiB ({estimate.peak_phase}), {verdict} "
            f"{gpu_memory_gb:g} GB (details: trl-ext estimate {path})"
        )
    return lines


def check_cli(argv: list[str] | None = None) -> int:
    """Run `trl-ext check`.

    Args:
        argv (`list[str]`, *optional*):
            The recipe path, options and ``--key value`` overrides; default: the process arguments.

    Returns:
        `int`: 0 when the recipe is ready to train, 2 on bad input (one `trl-ext: error:` line on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="trl-ext check",
        description="Dry run: validate a recipe, its model, dataset and output_dir, and estimate its memory. "
        "Nothing loads. Extra --key value pairs override recipe keys.",
    )
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument(
        "--gpu-memory-gb", "--gpu_memory_gb", dest="gpu", type=float, default=24.0, help="GPU memory in GB (24)"
    )
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        lines = check_recipe(args.recipe, overrides, gpu_memory_gb=args.gpu)
    except RecipeError as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print("OK: ready to train (trl-ext train " + " ".join([args.recipe, *overrides]) + ")")
    return 0
