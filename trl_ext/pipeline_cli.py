"""`trl-ext train` and `trl-ext estimate` for pipelines (recipes with ``stages:``); plain recipes pass through.

`trl-ext train PIPELINE.yaml` validates every stage first (keys, references, reward imports, output dirs and, on a GPU,
every stage's memory estimate), then runs the stages in order, each in a fresh process through the same
``accelerate launch -m trl_ext.train`` path as a single recipe, each into ``<output_dir>/<stage name>/``. A stage
that finished is skipped on a re-run; a stage that was interrupted resumes from its last checkpoint. ``--stage NAME``
runs one stage (its inputs must be complete).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from trl_ext.pipeline import STAGE_COMPLETE_FILE, Pipeline, Stage, is_pipeline, load_pipeline
from trl_ext.recipe import RecipeError, resolve_accelerate_config


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-ext train",
        description="Validate a recipe (or every stage of a pipeline), then run it with `accelerate launch -m "
        "trl_ext.train`. Extra --key value pairs override recipe keys (in a pipeline: in every stage that has them).",
    )
    parser.add_argument("recipe", help="recipe or pipeline YAML")
    parser.add_argument("--stage", default=None, help="pipeline only: run this one stage")
    from trl_ext.train import add_launch_arguments

    add_launch_arguments(parser)
    return parser


def train_cli(argv: list[str] | None = None) -> int:
    """Run `trl-ext train`: a pipeline stage by stage, or a plain recipe through `trl_ext.train.launch_main`.

    Args:
        argv (`list[str]`, *optional*):
            The recipe path, options and ``--key value`` overrides; default: the process arguments.

    Returns:
        `int`: 0 on success, 2 on bad input (before anything loads), the failing process's exit code otherwise.
    """
    from trl_ext.train import launch_main

    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = _train_parser().parse_known_args(argv)
    if not is_pipeline(args.recipe):
        if args.stage is not None:
            print(f"trl-ext: error: --stage needs a pipeline; {args.recipe} has no stages:.", file=sys.stderr)
            return 2
        return launch_main(argv)
    try:
        pipeline = load_pipeline(args.recipe, overrides)
        stages = [pipeline.stage(args.stage)] if args.stage else pipeline.stages
        preflight_pipeline(pipeline, stages, explicit=args.stage is not None)
        raw_config = pipeline.stages[0].recipe.script.accelerate_config
        accelerate_config = resolve_accelerate_config(args.recipe, args.accelerate_config or raw_config)
    except RecipeError as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    return run_stages(pipeline, stages, accelerate_config, args.num_processes, explicit=args.stage is not None)


def preflight_pipeline(pipeline: Pipeline, stages: list[Stage], explicit: bool = False) -> None:
    """Every check that runs before the first stage loads a weight, for every stage that will run.

    Raises:
        RecipeError: naming the stage and the problem.
    """
    from trl_ext.train import check_gpu_memory, check_reward_funcs

    for stage in stages:
        if stage.complete and not explicit:
            continue
        try:
            check_reward_funcs(stage.recipe)
            check_gpu_memory(stage.recipe)
        except RecipeError as err:
            raise RecipeError(f"stage {stage.name!r}: {err}") from None
        if explicit:
            for dep in pipeline.dependencies(stage):
                if not dep.complete:
                    raise RecipeError(
                        f"stage {stage.name!r} reads the output of stage {dep.name!r} ({dep.output_dir}), which is not "
                        f"complete; run the pipeline, or --stage {dep.name} first."
                    )


def stage_launch_overrides(stage: Stage) -> list[str]:
    """The stage's command-line overrides, plus ``--resume_from_checkpoint true`` when it left a checkpoint."""
    overrides = list(stage.overrides)
    if stage.last_checkpoint() is not None and stage.recipe.training.resume_from_checkpoint is None:
        overrides += ["--resume_from_checkpoint", "true"]
    return overrides


def launch_stage(launch_args: list[str]) -> int:
    """Run ``accelerate launch LAUNCH_ARGS`` (a fresh process); return its exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        launch_command(launch_command_parser().parse_args(launch_args))
    except Exception as err:  # accelerate raises CalledProcessError when the training process fails
        return getattr(err, "returncode", 1) or 1
    return 0


def run_stages(
    pipeline: Pipeline,
    stages: list[Stage],
    accelerate_config: str | None = None,
    num_processes: int | None = None,
    explicit: bool = False,
) -> int:
    """Run `stages` in order, each in its own process; skip the complete ones unless `explicit`.

    Returns:
        `int`: 0 when every stage finished, else the exit code of the stage that failed.
    """
    from trl_ext.train import accelerate_launch_args

    for stage in stages:
        label = f"stage {stage.name!r} ({stage.method}, {stage.index + 1} of {len(pipeline.stages)})"
        if stage.complete and not explicit:
            print(f"trl-ext: {label} is complete, skipped: {stage.output_dir}", flush=True)
            if stage.recipe_changed():
                print(
                    f"trl-ext: warning: stage {stage.name!r} ran with other keys than the pipeline now gives it; "
                    f"run it again with --stage {stage.name} (then the stages after it), or delete {stage.output_dir}.",
                    file=sys.stderr,
                    flush=True,
                )
            continue
        if explicit and stage.complete:
            (stage.output_dir / STAGE_COMPLETE_FILE).unlink()
        overrides = stage_launch_overrides(stage)
        checkpoint = stage.last_checkpoint()
        resuming = f", resuming from {checkpoint.name}" if "--resume_from_checkpoint" in overrides else ""
        print(f"trl-ext: {label} -> {stage.output_dir}{resuming}", flush=True)
        os.environ.update(stage.recipe.env)
        recipe_path = stage.write_recipe()
        code = launch_stage(accelerate_launch_args(str(recipe_path), overrides, accelerate_config, num_processes))
        if code:
            print(
                f"trl-ext: {label} failed (exit code {code}); run the same command again to resume it.",
                file=sys.stderr,
            )
            return code
        stage.mark_complete()
    print("trl-ext: pipeline outputs:", flush=True)
    for stage in pipeline.stages:
        state = "complete" if stage.complete else "not run"
        print(f"  {stage.name:<12} {stage.method:<7} {stage.output_dir}  ({state})", flush=True)
    return 0


def estimate_cli(argv: list[str] | None = None) -> int:
    """Run `trl-ext estimate`: the peak per stage of a pipeline, or `trl_ext.memory.cli.estimate_cli` for a recipe.

    Returns:
        `int`: 0 when every stage fits, 1 when one does not, 2 on bad input.
    """
    from trl_ext.memory.cli import estimate_cli as recipe_estimate_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="trl-ext estimate", add_help=False)
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--gpu-memory-gb", "--gpu_memory_gb", dest="gpu", type=float, default=24.0)
    parser.add_argument("--json", action="store_true")
    args, overrides = parser.parse_known_args(argv)
    if args.recipe is None or not is_pipeline(args.recipe) or args.gpu <= 0 or {"-h", "--help"} & set(argv):
        return recipe_estimate_cli(argv)  # a plain recipe, help, or an error that command reports
    try:
        estimates = estimate_pipeline(load_pipeline(args.recipe, overrides), args.gpu)
    except (RecipeError, FileNotFoundError, ValueError) as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(estimates, indent=2) if args.json else format_pipeline_estimate(estimates, args.gpu))
    return 0 if all(e["fits"] for e in estimates) else 1


def estimate_pipeline(pipeline: Pipeline, gpu_memory_gb: float = 24.0) -> list[dict]:
    """One estimate per stage: ``{"stage", "method", "peak_gib", "fits", "biggest", "estimate"}`` (full JSON).

    Stages run one after another in fresh processes, so the pipeline's peak is the largest stage's.
    """
    from trl_ext.memory import estimate_memory
    from trl_ext.memory.report import estimate_to_dict

    out = []
    for stage in pipeline.stages:
        est = estimate_memory(stage.recipe, gpu_memory_gb=gpu_memory_gb)
        out.append(
            {
                "stage": stage.name,
                "method": stage.method,
                "peak_gib": round(est.peak_gib, 3),
                "fits": est.fits,
                "biggest": [f"{c.name} {c.gib:.2f} GiB" for c in est.biggest(3)],
                "estimate": estimate_to_dict(est),
            }
        )
    return out


def format_pipeline_estimate(estimates: list[dict], gpu_memory_gb: float) -> str:
    """A table of the per-stage peaks and the pipeline's peak (the largest stage's)."""
    lines = [f"Estimated peak GPU memory per stage (stages run one at a time; GPU {gpu_memory_gb:g} GB):", ""]
    for e in estimates:
        verdict = "fits" if e["fits"] else "DOES NOT FIT"
        lines.append(
            f"  {e['stage']:<14} {e['method']:<8} {e['peak_gib']:7.2f} GiB  {verdict:<12} {'; '.join(e['biggest'])}"
        )
    worst = max(estimates, key=lambda e: e["peak_gib"])
    lines += ["", f"  pipeline peak: {worst['peak_gib']:.2f} GiB (stage {worst['stage']!r})"]
    return "\n".join(lines)
