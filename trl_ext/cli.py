"""The ``trl-ext`` command. Each subcommand lives in the module of its capability and is imported on use."""

from __future__ import annotations

import importlib
import sys

#: subcommand -> ("module:function", one-line help). Each function takes `argv` and returns an exit code.
#: Convention: bad input is one line `trl-ext: error: <problem and fix>` on stderr and exit code 2.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("trl_ext.pipeline_cli:train_cli", "validate a recipe (or pipeline) and run it with accelerate launch"),
    "check": ("trl_ext.check:check_cli", "dry run: validate a recipe, its model, data and output_dir; nothing loads"),
    "merge": ("trl_ext.merge:merge_cli", "merge a (Q)LoRA adapter into its base and save a plain model"),
    "chat": ("trl_ext.chat:chat_cli", "chat with a trained adapter: one prompt, or a loop on stdin"),
    "estimate": ("trl_ext.pipeline_cli:estimate_cli", "estimate a recipe's (or each stage's) peak GPU memory"),
    "memcheck": ("trl_ext.memcheck:memcheck_cli", "measure a recipe's peak GPU memory with random weights (GPU)"),
    "fisher": ("trl_ext.ewc:fisher_cli", "precompute the EWC Fisher of a recipe's base model to a file"),
    "eval-rewrite": (
        "trl_ext.rewards.eval_rewrite:eval_rewrite_cli",
        "score query rewrites on the retrieval benchmark",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: trl-ext <command> [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `trl-ext <command> --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    from trl_ext.runtime import quiet_known_warnings

    quiet_known_warnings()
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"trl-ext: error: unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    from trl_ext.assets import UnknownAssetError
    from trl_ext.recipe_validation import RecipeError

    module, func = COMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except (RecipeError, UnknownAssetError) as err:  # bad input a subcommand did not report: one line, no traceback
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
