"""`trl-ext memcheck`: measure a recipe's real peak GPU memory without downloading anything.

It builds the recipe's architecture from its `config.json` (bundled, local or cached) with random weights, saves it
to a temporary directory with a word-level tokenizer of the same vocabulary size, writes a synthetic dataset whose
rows fill the recipe's maximum lengths (completions are forced to `max_completion_length` for GRPO/PPO), then runs
the recipe itself -- quantization, LoRA, trainer, reference pass, generation and vLLM as configured -- for `--steps`
optimizer steps and reports `torch.cuda.max_memory_allocated` / `max_memory_reserved` next to the estimate.
`--memory-cap-gb 24` caps this process with `torch.cuda.set_per_process_memory_fraction` to emulate a 24 GB card
on a larger one. It needs a CUDA GPU; on CPU it exits with a message.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from trl_ext.memcheck_data import (  # noqa: F401  (re-exported: callers use them from here)
    save_random_model,
    synthetic_lengths,
    synthetic_rows,
    word_tokenizer,
    word_tokenizer_for_loading,
)

GB = 1e9
GiB = 1024**3


class MemcheckUnavailable(RuntimeError):
    """memcheck cannot run here (no CUDA GPU)."""


def memcheck(
    recipe_path: str,
    steps: int = 5,
    memory_cap_gb: float | None = None,
    overrides: list[str] | None = None,
    workdir: str | None = None,
    prompt_length: int | None = None,
) -> dict:
    """Run `steps` real training steps of the recipe on random weights and return the measured peaks.

    Args:
        recipe_path (`str`):
            Recipe YAML.
        steps (`int`, *optional*, defaults to `5`):
            Optimizer steps to run.
        memory_cap_gb (`float` or `None`, *optional*):
            Cap this process at this many GB (10^9 bytes), e.g. 24 to emulate a 24 GB card on a larger one.
        overrides (`list[str]` or `None`, *optional*):
            `--key value` recipe overrides.
        workdir (`str` or `None`, *optional*):
            Directory for the random model and the synthetic data; default: a new temporary directory.
        prompt_length (`int` or `None`, *optional*):
            GRPO/PPO prompt tokens; default as `trl-ext estimate`.

    Returns:
        `dict`: The GPU, `max_memory_allocated_gib`, `max_memory_reserved_gib`, `estimated_peak_gib` and the run's
        settings.

    Raises:
        `MemcheckUnavailable`: When no CUDA GPU is visible.
    """
    import torch

    if not torch.cuda.is_available():
        raise MemcheckUnavailable(
            "trl-ext memcheck measures real GPU memory and needs a CUDA GPU; none is visible here. "
            "On CPU, use `trl-ext estimate RECIPE` for the predicted peak."
        )
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}.")
    from trl_ext.memory import estimate_memory, load_architecture
    from trl_ext.recipe import load_recipe
    from trl_ext.runtime import apply_runtime
    from trl_ext.train import build_trainer

    overrides = list(overrides or [])
    recipe = load_recipe(recipe_path, overrides)
    arch = load_architecture(recipe.model.model_name_or_path)
    work = Path(workdir or tempfile.mkdtemp(prefix="trl-ext-memcheck-"))
    model_dir = work / "model"
    save_random_model(arch.config, model_dir, device="cuda")
    run_overrides = ["--model_name_or_path", str(model_dir)]
    if recipe.script.reward_model_name_or_path:
        reward_arch = load_architecture(recipe.script.reward_model_name_or_path)
        save_random_model(reward_arch.config, work / "reward", model_class="classifier", device="cuda")
        run_overrides += ["--reward_model_name_or_path", str(work / "reward")]
    lengths = synthetic_lengths(recipe, prompt_length)
    training = recipe.training
    per_step = training.per_device_train_batch_size * training.gradient_accumulation_steps
    rows = synthetic_rows(recipe.method, lengths, max(64, 2 * steps * per_step), arch.vocab_size)
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_overrides += [
        "--dataset_name",
        str(data),
        "--max_steps",
        str(steps),
        "--output_dir",
        str(work / "out"),
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--skip_memory_check",
        "true",
    ]
    run_recipe = apply_runtime(load_recipe(recipe_path, overrides + run_overrides))
    if run_recipe.method in ("grpo", "ppo"):  # every completion as long as the recipe allows
        key = "min_tokens" if getattr(run_recipe.training, "use_vllm", False) else "min_new_tokens"
        kwargs = dict(run_recipe.training.generation_kwargs or {})
        kwargs[key] = lengths["completion"]
        run_recipe.training.generation_kwargs = kwargs
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if memory_cap_gb:
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_gb * GB / total))
    torch.cuda.reset_peak_memory_stats()
    with word_tokenizer_for_loading(arch.vocab_size):
        trainer = build_trainer(run_recipe)
    trainer.train()
    allocated = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    estimate = estimate_memory(
        recipe, gpu_memory_bytes=(memory_cap_gb * GB) if memory_cap_gb else total, prompt_length=prompt_length
    )
    return {
        "recipe": str(recipe_path),
        "model": arch.name,
        "method": recipe.method,
        "steps": steps,
        "gpu": torch.cuda.get_device_name(),
        "gpu_total_gib": round(total / GiB, 2),
        "memory_cap_gb": memory_cap_gb,
        "lengths": lengths,
        "max_memory_allocated_gib": round(allocated / GiB, 2),
        "max_memory_reserved_gib": round(reserved / GiB, 2),
        "estimated_peak_gib": round(estimate.peak_gib, 2),
        "estimated_allocated_gib": round(estimate.allocated_gib, 2),
        "torch": torch.__version__,
    }


def memcheck_cli(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="trl-ext memcheck",
        description="Measure a recipe's peak GPU memory: random weights from its config, synthetic batches at "
        "its maximum lengths, N real training steps (needs a CUDA GPU). Extra --key value pairs override recipe keys.",
    )
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps to run (default 5 on cuda, 2 on cpu)")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: measure max_memory_allocated on a GPU; cpu: trace live tensor bytes of the same steps (no GPU)",
    )
    parser.add_argument(
        "--depths",
        type=str,
        default=None,
        help="cpu: trace at these decoder depths and extrapolate linearly, e.g. 1,2 (a third, e.g. 1,2,3, "
        "validates the extrapolation); default: the full depth",
    )
    parser.add_argument(
        "--lengths",
        type=str,
        default=None,
        help="cpu: trace at these values of the recipe's length key (max_length; GRPO/PPO max_completion_length) and "
        "extrapolate to the recipe's, bilinearly with --depths, e.g. 128,256 (a third validates)",
    )
    parser.add_argument(
        "--memory-cap-gb",
        "--memory_cap_gb",
        dest="cap",
        type=float,
        default=None,
        help="cap this process at this many GB (10^9 bytes), e.g. 24 to emulate a 24 GB card",
    )
    parser.add_argument(
        "--prompt-length",
        "--prompt_length",
        dest="prompt_length",
        type=int,
        default=None,
        help="GRPO/PPO prompt tokens (default: as trl-ext estimate)",
    )
    parser.add_argument("--workdir", default=None, help="directory for the random model and data (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args, overrides = parser.parse_known_args(argv)
    if args.device == "cpu":
        return _memcheck_cpu_cli(args, overrides)
    try:
        result = memcheck(
            args.recipe,
            steps=args.steps or 5,
            memory_cap_gb=args.cap,
            overrides=overrides,
            workdir=args.workdir,
            prompt_length=args.prompt_length,
        )
    except (MemcheckUnavailable, ValueError) as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['recipe']}: {result['steps']} steps on {result['gpu']}"
            + (f" capped at {args.cap:g} GB" if args.cap else "")
            + f": max allocated {result['max_memory_allocated_gib']} GiB, max reserved "
            f"{result['max_memory_reserved_gib']} GiB (estimated {result['estimated_peak_gib']} GiB)"
        )
    return 0


def _memcheck_cpu_cli(args, overrides: list[str]) -> int:
    from trl_ext.memcheck_cpu import format_trace, trace_recipe
    from trl_ext.recipe import RecipeError

    axes = {}
    for name, example in (("depths", "layer counts, e.g. 1,2"), ("lengths", "token counts, e.g. 128,256")):
        value = getattr(args, name)
        try:
            axes[name] = tuple(int(v) for v in value.split(",")) if value else None
        except ValueError:
            print(f"trl-ext: error: --{name} takes comma-separated {example}; got {value!r}.", file=sys.stderr)
            return 2
    try:
        result = trace_recipe(args.recipe, overrides, steps=args.steps or 2, prompt_length=args.prompt_length, **axes)
    except (RecipeError, FileNotFoundError, ValueError) as err:
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_trace(result))
    return 0
