"""Training entry point: ``accelerate launch [--config_file X] -m trl_ext.train --config R.yaml [--key value ...]``.

``trl-ext train R.yaml [...]`` validates the recipe, then runs exactly this module through ``accelerate launch``
(see `launch_main`). Every process parses the same recipe; nothing heavy happens before validation passes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from pathlib import Path

from trl_ext.checkpoints import (
    disk_room_problem,
    format_bytes,
    move_into,
    write_error_message,
)
from trl_ext.data.loading import load_datasets
from trl_ext.preflight import (  # noqa: F401  (re-exported: callers and tests import them from here)
    check_gpu_memory,
    check_output_dir,
    check_output_dir_writable,
    check_reward_funcs,
    check_reward_kwargs,
    check_sft_adapter,
    preflight,
)
from trl_ext.recipe import Recipe, RecipeError, load_recipe, resolve_accelerate_config
from trl_ext.runtime import apply_runtime, quiet_known_warnings

logger = logging.getLogger(__name__)

#: method -> (module, trainer class). The recipe layer knows only the configs; trainers are looked up here, at the top.
TRAINERS: dict[str, tuple[str, str]] = {
    "dpo": ("trl_ext.trainers.dpo", "DPOTrainer"),
    "grpo": ("trl_ext.trainers.grpo", "GRPOTrainer"),
    "kto": ("trl_ext.trainers.kto", "KTOTrainer"),
    "ppo": ("trl_ext.trainers.ppo", "PPOTrainer"),
    "sft": ("trl_ext.trainers.sft", "SFTTrainer"),
    "reward": ("trl_ext.trainers.reward", "RewardTrainer"),
}


def trainer_class(method: str):
    """The trainer class of `method` (`trl_ext.trainers.<method>`)."""
    import importlib

    module, name = TRAINERS[method]
    return getattr(importlib.import_module(module), name)


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


def checkpoint_bytes(trainer) -> int:
    """Bytes of one checkpoint of `trainer`: its trainable weights plus Adam's two fp32 moments (unless
    `save_only_model`), plus 1 MiB of configs, tokenizer and RNG states."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    moments = 0 if trainer.args.save_only_model else sum(p.numel() * 8 for p in params)
    return weights + moments + 2**20


def check_disk_room(trainer) -> int:
    """Refuse (RecipeError) a run whose output_dir is not writable or lacks room for the checkpoints it will keep and
    the final result; return the size of one checkpoint."""
    args = trainer.args
    size = checkpoint_bytes(trainer)
    max_steps = args.max_steps
    if max_steps <= 0:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        max_steps = int(-(-len(trainer.train_dataset) // per_step) * args.num_train_epochs)
    strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
    saves = {"steps": max_steps // max(int(args.save_steps), 1), "epoch": int(args.num_train_epochs)}.get(strategy, 0)
    if args.save_total_limit:
        saves = min(saves, args.save_total_limit + 1)  # one more while the oldest is rotated out
    what = f"{saves} checkpoints of {format_bytes(size)} and the result" if saves else "the result"
    problem = disk_room_problem(args.output_dir, int((saves + 1) * size * 1.1), what)
    if problem is not None:
        raise RecipeError(problem)
    return size


def save_result(trainer, output_dir: str, model_name_or_path: str | None = None) -> None:
    """Save the trained model into `output_dir` atomically: written to a staging directory inside it, then moved in
    file by file, so a failed save never leaves a half-written adapter where the result belongs. An adapter of a
    bundled model records it as `builtin:<name>` (`model_name_or_path`), not this machine's path."""
    staging = Path(output_dir) / ".trl-ext-staging"
    if trainer.accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        move_into(staging, output_dir)
        if model_name_or_path:
            from trl_ext.adapters import record_builtin_base

            record_builtin_base(output_dir, model_name_or_path)
    trainer.save_state()


def build_trainer(recipe: Recipe, callbacks: list | None = None):
    """Load data, model and tokenizer as the recipe says and return the method's trainer, ready to ``train()``.

    The recipe is first applied to the process (`apply_runtime`: its ``env:``, the CPU precision fallback).
    """
    from trl_ext.adapters import load_starting_policy
    from trl_ext.modeling import load_model_and_tokenizer

    recipe = apply_runtime(recipe)
    check_output_dir(recipe)
    check_sft_adapter(recipe)
    check_gpu_memory(recipe)
    train_dataset, eval_dataset = load_datasets(recipe)
    method_kwargs = _trainer_kwargs(recipe)  # imports reward code (and builds indexes) before weights load
    trainer_cls = trainer_class(recipe.method)
    loading = getattr(trainer_cls, "model_loading", {})  # e.g. the reward model: a sequence classifier
    if loading:
        from transformers import set_seed

        set_seed(recipe.training.seed)  # a fresh classification head: seeded, as TRL seeds it
    model, tokenizer, peft_config = load_model_and_tokenizer(
        recipe.model, recipe.training, fp32_activations=recipe.script.kbit_fp32_activations, **loading
    )
    sft_adapter_path = getattr(recipe.training, "sft_adapter_path", None)
    if sft_adapter_path:  # the policy starts from the SFT adapter; the trainer adds its frozen copy as the reference
        model = load_starting_policy(model, sft_adapter_path)
        peft_config = None
    trainer = trainer_cls(
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
    """Train and save: the adapter (or model), tokenizer and ``trainer_state.json`` land in ``output_dir``.

    Raises:
        RecipeError: output_dir is not writable or too small for the run's checkpoints (before training).
        TrainingStopped: the run stopped (non-finite steps, a failing reward function, the disk refused a write);
            the message says what happened and which checkpoint to resume from.
    """
    from trl_ext.trainers.guards import TrainingStopped

    trainer = build_trainer(recipe)
    output_dir = recipe.training.output_dir
    size = check_disk_room(trainer)
    try:
        trainer.train(resume_from_checkpoint=recipe.training.resume_from_checkpoint or None)
        save_result(trainer, output_dir, recipe.model.model_name_or_path)
    except TrainingStopped:
        raise
    except Exception as err:
        message = write_error_message(err, output_dir) if isinstance(err, OSError) else None
        if message is None and shutil.disk_usage(output_dir).free < size:
            # torch.save and safetensors report a full disk in their own words ("unexpected pos ...")
            message = f"{write_error_message(OSError(errno.ENOSPC, 'disk full'), output_dir)} (the error: {err})"
        if message is None:
            raise
        raise TrainingStopped(message) from err
    trainer.accelerator.print(f"Saved to {output_dir}")
    # Every rank must be done writing before the process group goes away: a rank that tears it down while the main
    # process is still saving leaves the main process blocked on a peer that no longer exists.
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):
        trainer.end()
    return trainer


def _leave(code: int) -> int:
    """Exit code `code`; under DDP leave at once, without interpreter teardown: freeing the DDP reducer afterwards
    runs the process group's destructor, which can block forever once a peer has exited (seen with gloo;
    pytorch/pytorch#75097 for the same class of hang)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    quiet_known_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    config = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            print("trl-ext: error: --config needs a recipe path", file=sys.stderr)
            return 2
        config = argv[i + 1]
        del argv[i : i + 2]
    from trl_ext.trainers.guards import TrainingStopped

    try:
        recipe = apply_runtime(load_recipe(config, argv))
        check_reward_funcs(recipe)
        check_reward_kwargs(recipe)
        run(recipe)
    except RecipeError as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        if not err.quiet:
            print(f"trl-ext: training stopped: {err}", file=sys.stderr)
        return _leave(1)
    return _leave(0)


# ---------------------------------------------------------------------------------------------------------------
# `trl-ext train`: the same module through `accelerate launch`
# ---------------------------------------------------------------------------------------------------------------


def accelerate_launch_args(
    recipe_path: str,
    overrides: list[str],
    accelerate_config: str | None,
    num_processes: int | None,
    mixed_precision: str | None = None,
) -> list[str]:
    """The ``accelerate launch`` argument list that runs this module on ``recipe_path``.

    Without any accelerate config, the single-machine defaults are passed explicitly, ``mixed_precision`` (the
    recipe's: ``bf16``, ``fp16`` or ``no``) included, so accelerate has nothing to warn about.
    """
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
        if mixed_precision is not None:
            args += ["--mixed_precision", mixed_precision]
    return args + ["-m", "trl_ext.train", "--config", recipe_path, *overrides]


def add_launch_arguments(parser) -> None:
    """The launch options of `trl-ext train` (recipes and pipelines alike): `--accelerate_config`, `--num_processes`."""
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


def launch_main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="trl-ext train",
        description="Validate a recipe, then run it with `accelerate launch -m trl_ext.train`. "
        "Extra --key value pairs override recipe keys.",
    )
    parser.add_argument("recipe", help="recipe YAML")
    add_launch_arguments(parser)
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

    precision = "bf16" if recipe.training.bf16 else "fp16" if recipe.training.fp16 else "no"
    launch_args = accelerate_launch_args(args.recipe, overrides, accelerate_config, args.num_processes, precision)
    try:
        launch_command(launch_command_parser().parse_args(launch_args))
    except Exception as err:  # accelerate raises CalledProcessError when the training process fails
        returncode = getattr(err, "returncode", 1)
        if returncode != 2:  # 2: the training process already said why, as one `trl-ext: error:` line
            print(f"trl-ext: training failed (exit code {returncode})", file=sys.stderr)
        return returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
