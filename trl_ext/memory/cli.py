"""`trl-ext estimate`: a recipe's predicted peak GPU memory, component by component."""

from __future__ import annotations

import argparse
import json
import sys

from trl_ext.memory.check import estimate_memory
from trl_ext.memory.report import estimate_to_dict, format_estimate
from trl_ext.recipe import RecipeError


def estimate_cli(argv: list[str] | None = None) -> int:
    """Run `trl-ext estimate`.

    Args:
        argv (`list[str]` or `None`, *optional*):
            The recipe path, options, and `--key value` recipe overrides; default: the process arguments.

    Returns:
        `int`: 0 when the recipe fits, 1 when it does not, 2 on bad input.
    """
    parser = argparse.ArgumentParser(
        prog="trl-ext estimate",
        description="Predict a recipe's peak GPU memory per component (no weights loaded, offline). "
        "Extra --key value pairs override recipe keys.",
    )
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument(
        "--gpu-memory-gb",
        "--gpu_memory_gb",
        dest="gpu",
        type=float,
        default=24.0,
        help="GPU memory in GB (10^9 bytes) to judge against (default 24)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--prompt-length",
        "--prompt_length",
        dest="prompt_length",
        type=int,
        default=None,
        help="GRPO/PPO prompt tokens (default: from the recipe, else 512)",
    )
    parser.add_argument(
        "--full-logits",
        "--full_logits",
        dest="full_logits",
        action="store_true",
        help="model a trainer that materializes the full (tokens, vocab) logits",
    )
    args, overrides = parser.parse_known_args(argv)
    if args.gpu <= 0:
        parser.error("--gpu-memory-gb must be positive, e.g. 24")
    try:
        estimate = estimate_memory(
            args.recipe,
            gpu_memory_gb=args.gpu,
            overrides=overrides,
            prompt_length=args.prompt_length,
            full_logits=args.full_logits or None,
        )
    except (RecipeError, FileNotFoundError, ValueError) as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(estimate_to_dict(estimate), indent=2) if args.json else format_estimate(estimate))
    return 0 if estimate.fits else 1
