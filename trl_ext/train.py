"""Training entry point: ``accelerate launch [--config_file X] -m trl_ext.train --config R.yaml [--key value ...]``.

``trl-ext train R.yaml [...]`` validates the recipe, then runs exactly this module through ``accelerate launch``
(see `launch_main`). Every process parses the same recipe; nothing heavy happens before validation passes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from trl_ext.data.loading import load_datasets
from trl_ext.recipe import Recipe, RecipeError, load_recipe, resolve_accelerate_config
from trl_ext.runtime import apply_runtime

logger = logging.getLogger(__name__)

#: method -> (module, trainer class). The recipe layer knows only the configs; trainers are looked up here, at the top.
TRAINERS: dict[str, tuple[str, str]] = {
    "dpo": ("trl_ext.trainers.dpo", "DPOTrainer"),
    "grpo": ("trl_ext.trainers.grpo", "GRPOTrainer"),
    "kto": ("trl_ext.trainers.kto", "KTOTrainer"),
    "ppo": ("trl_ext.trainers.ppo", "PPOTrainer"),
}


def trainer_class(method: str):
    """The trainer class of `method` (`trl_ext.trainers.<method>`)."""
    import importlib

    module, name = TRAINERS[method]
    return getattr(importlib.import_module(module), name)


def check_reward_funcs(recipe: Recipe) -> None:
    """Refuse (RecipeError) a `reward_funcs` entry that cannot be imported, before anything loads.

    Part of the checks that need the capabilities (the recipe layer below them only checks keys and values).
    """
    if not recipe.script.reward_funcs:
        return
    from trl_ext.rewards import resolve_reward_func

    source = f"recipe {recipe.path}" if recipe.path else "the command line"
    for name in recipe.script.reward_funcs:
        try:
            resolve_reward_func(name)
        except (ImportError, AttributeError, ValueError) as err:
            raise RecipeError(f"reward_funcs entry {name!r} in {source} cannot be loaded: {err}") from None


def preflight(recipe: Recipe) -> Recipe:
    """Every check that runs before a process loads weights: rewards importable, output_dir safe to write."""
    check_reward_funcs(recipe)
    check_output_dir(recipe)
    return recipe


def _trainer_kwargs(recipe: Recipe) -> dict:
    """Arguments that differ between methods (reward functions for the online methods)."""
    if recipe.method not in ("grpo", "ppo"):
        return {}
    from trl_ext.rewards import load_reward_funcs

    reward_kwargs = recipe.script.reward_kwargs
    if isinstance(reward_kwargs, str):
        import json

        reward_kwargs = json.loads(reward_kwargs)
    funcs = load_reward_funcs(recipe.script.reward_funcs, reward_kwargs)
    if recipe.script.reward_model_name_or_path:
        funcs.append(recipe.script.reward_model_name_or_path)
    return {"reward_funcs": funcs}


def check_output_dir(recipe: Recipe) -> None:
    """Refuse to write a fresh run over checkpoints a previous run left, unless resuming from them."""
    out = Path(recipe.training.output_dir)
    if recipe.training.resume_from_checkpoint or not out.is_dir():
        return
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
    if checkpoints:
        raise RecipeError(
            f"output_dir {out} already holds checkpoints ({', '.join(checkpoints[-3:])}); a new run would overwrite "
            "them. Resume with --resume_from_checkpoint true, or choose another --output_dir."
        )


def check_gpu_memory(recipe: Recipe) -> None:
    """On a GPU, refuse (RecipeError) a recipe predicted not to fit this process's GPU (``skip_memory_check``)."""
    import torch

    if not torch.cuda.is_available():
        return
    from trl_ext.memory import check_recipe_memory

    device = torch.cuda.current_device()
    check_recipe_memory(recipe, torch.cuda.get_device_properties(device).total_memory)


def build_trainer(recipe: Recipe, callbacks: list | None = None):
    """Load data, model and tokenizer as the recipe says and return the method's trainer, ready to ``train()``.

    The recipe is first applied to the process (`apply_runtime`: its ``env:``, the CPU precision fallback).
    """
    from trl_ext.modeling import load_model_and_tokenizer

    recipe = apply_runtime(recipe)
    check_output_dir(recipe)
    check_gpu_memory(recipe)
    train_dataset, eval_dataset = load_datasets(recipe)
    method_kwargs = _trainer_kwargs(recipe)  # imports reward code (and builds indexes) before weights load
    model, tokenizer, peft_config = load_model_and_tokenizer(
        recipe.model, recipe.training, fp32_activations=recipe.script.kbit_fp32_activations
    )
    trainer = trainer_class(recipe.method)(
        model=model,
        args=recipe.training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        **method_kwargs,
    )
    if recipe.script.ignore_bias_buffers:
        import torch

        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
        ]
    return trainer


def run(recipe: Recipe):
    """Train and save: the adapter (or model), tokenizer and ``trainer_state.json`` land in ``output_dir``."""
    trainer = build_trainer(recipe)
    resume = recipe.training.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    trainer.train(resume_from_checkpoint=resume or None)
    output_dir = recipe.training.output_dir
    trainer.save_model(output_dir)
    trainer.save_state()
    trainer.accelerator.print(f"Saved to {output_dir}")
    # Every rank must be done writing before the process group goes away: a rank that tears it down while the main
    # process is still saving leaves the main process blocked on a peer that no longer exists.
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            print("trl-ext: error: --config needs a recipe path", file=sys.stderr)
            return 2
        config = argv[i + 1]
        del argv[i : i + 2]
    try:
        recipe = apply_runtime(load_recipe(config, argv))
        check_reward_funcs(recipe)
        trainer = run(recipe)
    except RecipeError as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    if trainer.accelerator.num_processes > 1:
        # Every rank has saved, met at the barrier and left the process group. Leave now, without interpreter
        # teardown: freeing the DDP reducer afterwards runs the process group's destructor, which can block forever
        # once a peer has exited (seen with gloo; pytorch/pytorch#75097 for the same class of hang).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# `trl-ext train`: the same module through `accelerate launch`
# ---------------------------------------------------------------------------------------------------------------


def accelerate_launch_args(
    recipe_path: str, overrides: list[str], accelerate_config: str | None, num_processes: int | None
) -> list[str]:
    """The ``accelerate launch`` argument list that runs this module on ``recipe_path``."""
    from accelerate.commands.config import default_config_file

    args: list[str] = []
    if accelerate_config:
        args += ["--config_file", accelerate_config]
    if num_processes is not None:
        args += ["--num_processes", str(num_processes)]
        if num_processes > 1 and not accelerate_config:
            args += ["--multi_gpu"]
    if not accelerate_config and not Path(default_config_file).is_file():
        # No config anywhere: say the single-machine defaults out loud instead of letting accelerate warn.
        if num_processes is None:
            args += ["--num_processes", "1"]
        args += ["--num_machines", "1", "--dynamo_backend", "no"]
    return args + ["-m", "trl_ext.train", "--config", recipe_path, *overrides]


def launch_main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="trl-ext train",
        description="Validate a recipe, then run it with `accelerate launch -m trl_ext.train`. "
        "Extra --key value pairs override recipe keys.",
    )
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument(
        "--accelerate_config",
        "--accelerate-config",
        dest="accelerate_config",
        default=None,
        help="accelerate config file (default: the recipe's accelerate_config key)",
    )
    parser.add_argument(
        "--num_processes",
        "--num-processes",
        dest="num_processes",
        type=int,
        default=None,
        help="number of processes (GPUs); >1 without a config launches multi-GPU DDP",
    )
    args, overrides = parser.parse_known_args(argv)
    try:
        # fail here, once, before any process starts; the processes inherit the recipe's env:
        recipe = preflight(apply_runtime(load_recipe(args.recipe, overrides)))
        accelerate_config = resolve_accelerate_config(
            args.recipe, args.accelerate_config or recipe.script.accelerate_config
        )
    except RecipeError as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2

    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args = accelerate_launch_args(args.recipe, overrides, accelerate_config, args.num_processes)
    try:
        launch_command(launch_command_parser().parse_args(launch_args))
    except Exception as err:  # accelerate raises CalledProcessError when the training process fails
        returncode = getattr(err, "returncode", 1)
        print(f"trl-ext: training failed (exit code {returncode})", file=sys.stderr)
        return returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
