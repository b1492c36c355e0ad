"""`trl-ext memcheck --device cpu`: the traced peak of a recipe's real training steps, without a GPU.

The recipe runs unchanged -- its trainer, 4-bit quantization, LoRA, reference pass, generation, critic, EWC Fisher --
on a random-weight model built from its architecture's `config.json`, with synthetic rows that fill its maximum
lengths, and with the dtypes it would use on its GPU (bf16/fp16 mixed precision and the 4-bit compute dtype are kept
on, through `TRL_EXT_COMPUTE_DTYPE`); its reward functions, which hold no GPU memory, become `trace_reward`, which
synthetic rows can feed. `trl_ext.memory.trace.LiveBytesTracer` counts the live tensor bytes of every
step by phase (`fisher`, `precompute`, `generation`, `scoring`, `train`) and category.

A model too big to run on a CPU is traced at reduced depth and length: two depths (e.g. 1 and 2 decoder layers)
and/or two values of the recipe's length key, every phase and category extrapolated (linearly, or bilinearly on the
depth x length grid: `trl_ext.memory.extrapolate`) to the real depth and length, validated against a third depth or
length traced directly (`extrapolation_error`). EWC and forgetting-monitor anchor text is synthetic too (offline).
A colocated vLLM cannot run on a CPU: generation falls back to HF generate and the result says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from trl_ext.memcheck_lengths import GENERATING_METHODS, length_key, point_inputs, recipe_length

GiB = 1024**3

#: Phase of each trainer method the tracer wraps (where the method exists).
PHASE_METHODS = {
    "_precompute_ref_logps": "precompute",
    "_generate_and_score_completions": "scoring",
    "_generate": "generation",
    "training_step": "train",
}


def _run_overrides(recipe, model_dir: Path, work: Path, steps: int, lengths: dict, vocab: int) -> list[str]:
    from trl_ext.memcheck_data import synthetic_rows
    from trl_ext.memory import settings_from_recipe

    t = recipe.training
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if recipe.method in GENERATING_METHODS:  # one generation batch (prompts x completions) covers several steps
        per_step = max(per_step, settings_from_recipe(recipe).generation_batch_size)
    rows = synthetic_rows(recipe.method, lengths, max(16, 2 * steps * per_step), vocab)
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--max_steps", str(steps)]
    out += ["--output_dir", str(work / "out"), "--save_strategy", "no", "--eval_strategy", "no"]
    out += ["--report_to", "none", "--logging_steps", "1", "--skip_memory_check", "true"]
    out += ["--dataloader_num_workers", "0"]
    out += _anchor_overrides(t, work, vocab)
    for key in ("bf16", "fp16"):  # keep the GPU's mixed precision (apply_runtime keeps keys set on the command line)
        out += [f"--{key}", "true" if getattr(t, key, False) else "false"]
    if getattr(t, "use_vllm", False):
        out += ["--use_vllm", "false"]
    if recipe.script.reward_funcs:  # rewards run on the host; theirs need columns the synthetic rows lack
        out += ["--reward_funcs", *[TRACE_REWARD] * len(recipe.script.reward_funcs), "--reward_kwargs", "{}"]
    if getattr(t, "assistant_only_loss", False):  # synthetic SFT rows are prompt/completion: the completion-only
        out += ["--assistant_only_loss", "false"]  # loss masks the same positions without a chat template
    return out


#: The reward every `reward_funcs` entry becomes in a trace: a reward function runs on the host, on decoded text,
#: and holds no GPU memory, while the recipe's own may need dataset columns (a query-rewrite reward reads `query`,
#: `gold_doc_ids`) that synthetic rows do not have. Its rewards differ within a group, so the advantages are not
#: all zero and the loss and its backward are the real ones.
TRACE_REWARD = "trl_ext.memcheck_data.trace_reward"

#: Anchor-text passes: dataset key -> (split key, length key, sample-count key).
ANCHOR_KEYS = {
    "ewc_fisher_dataset": ("ewc_fisher_split", "ewc_fisher_max_length", "ewc_fisher_samples"),
    "forgetting_anchor_dataset": ("forgetting_anchor_split", "forgetting_max_length", "forgetting_eval_samples"),
}
#: Anchor samples a trace runs: the Fisher's accumulators and the monitor's per-sample passes do not grow with the
#: count, only the time does.
ANCHOR_SAMPLES = 4


def _anchor_overrides(t, work: Path, vocab: int) -> list[str]:
    """Synthetic anchor text (offline, full length) for the EWC Fisher pass and the forgetting monitor, 4 samples."""
    from trl_ext.memcheck_data import synthetic_text_rows

    out = []
    for key, (split, length, samples) in ANCHOR_KEYS.items():
        if getattr(t, key, None):
            path = work / f"{key}.jsonl"
            rows = synthetic_text_rows(int(getattr(t, length)), 2 * ANCHOR_SAMPLES, vocab)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            out += [f"--{key}", str(path), f"--{split}", "train"]
            out += [f"--{samples}", str(min(int(getattr(t, samples)), ANCHOR_SAMPLES))]
    return out


@contextlib.contextmanager
def _compute_dtype_env(recipe):
    from trl_ext.modeling import COMPUTE_DTYPE_ENV

    t = recipe.training
    dtype = "bfloat16" if getattr(t, "bf16", False) else "float16" if getattr(t, "fp16", False) else "float32"
    old = os.environ.get(COMPUTE_DTYPE_ENV)
    os.environ[COMPUTE_DTYPE_ENV] = dtype
    try:
        yield dtype
    finally:
        if old is None:
            os.environ.pop(COMPUTE_DTYPE_ENV, None)
        else:
            os.environ[COMPUTE_DTYPE_ENV] = old


def trace_once(recipe_path, overrides=None, steps: int = 2, num_layers: int | None = None, prompt_length=None) -> dict:
    """Trace `steps` optimizer steps of the recipe on a random model of `num_layers` decoder layers (default: all).

    Returns:
        `dict`: `LiveBytesTracer.result()` plus `num_layers`, `lengths`, `compute_dtype` and `notes`.
    """
    import torch

    from trl_ext.memcheck_data import save_random_model, synthetic_lengths, word_tokenizer_for_loading
    from trl_ext.memory import load_architecture
    from trl_ext.memory.terms import FUSED_VOCAB_TILE
    from trl_ext.memory.trace import LiveBytesTracer, cpu_fallbacks_excluded, offloading_emulated, optimizer_steps_as
    from trl_ext.recipe import load_recipe
    from trl_ext.runtime import apply_runtime
    from trl_ext.train import build_trainer

    overrides = list(overrides or [])
    recipe = load_recipe(recipe_path, overrides)
    arch = load_architecture(recipe.model.model_name_or_path)
    depth = num_layers or arch.num_layers
    notes = []
    if getattr(recipe.training, "use_vllm", False):
        notes.append("vLLM cannot run on a CPU: traced with HF generate (use_vllm false)")
    if offloading := bool(getattr(recipe.training, "activation_offloading", False)):
        notes.append("activation offloading: TRL's policy emulated (its own needs a GPU); host copies not counted")
    with tempfile.TemporaryDirectory(prefix="trl-ext-trace-") as tmp, _compute_dtype_env(recipe) as dtype:
        work = Path(tmp)
        save_random_model(arch.config, work / "model", num_layers=depth)
        lengths = synthetic_lengths(recipe, prompt_length)
        extra = _run_overrides(recipe, work / "model", work, steps, lengths, arch.vocab_size)
        if recipe.script.reward_model_name_or_path:
            reward = load_architecture(recipe.script.reward_model_name_or_path)
            save_random_model(reward.config, work / "reward", model_class="classifier")
            extra += ["--reward_model_name_or_path", str(work / "reward")]
        run_recipe = apply_runtime(load_recipe(recipe_path, overrides + extra))
        if run_recipe.method in ("grpo", "ppo"):  # every completion as long as the recipe allows
            kwargs = dict(run_recipe.training.generation_kwargs or {})
            kwargs["min_new_tokens"] = lengths["completion"]
            run_recipe.training.generation_kwargs = kwargs
        tracer = LiveBytesTracer(
            vocab_sizes=(arch.vocab_size, FUSED_VOCAB_TILE),
            kv_shape=(arch.num_kv_heads, arch.head_dim),
        )
        torch.manual_seed(0)
        with (
            contextlib.redirect_stdout(sys.stderr),
            word_tokenizer_for_loading(arch.vocab_size),
            tracer,
            optimizer_steps_as(tracer),
            cpu_fallbacks_excluded(tracer),
            offloading_emulated(tracer) if offloading else contextlib.nullcontext(),
        ):
            trainer = _build_traced(build_trainer, run_recipe, tracer)
            tracer.classify_model(trainer.model)
            for method, phase in PHASE_METHODS.items():
                tracer.wrap(trainer, method, phase=phase)
            trainer.train()
            # a rollout after the first runs beside the optimizer states (the trace's only rollout ran before them)
            steady = ("generation", "scoring") if run_recipe.method in GENERATING_METHODS else ()
            result = tracer.result(steady_phases=steady)
        if steady:
            notes.append("generation and scoring peaks include the optimizer states a later rollout runs beside")
    if "train" not in result["phases"]:
        raise RuntimeError(
            f"the trace of {recipe_path} ran no training step (phases traced: {', '.join(result['phases'])}): its "
            "trainer stopped before the first step; the log above says why."
        )
    return {**result, "num_layers": depth, "lengths": lengths, "compute_dtype": dtype, "notes": notes}


def _build_traced(build_trainer, run_recipe, tracer):
    """Build the trainer; an EWC Fisher pass at start (in the trainer's `__init__`) is traced as its own phase."""
    try:
        from trl_ext.ewc.trainer import EWCTrainerMixin
    except ImportError:  # pragma: no cover
        return build_trainer(run_recipe)
    original = EWCTrainerMixin._setup_ewc

    def setup_ewc(self, config):
        with tracer.in_phase("fisher"):
            result = original(self, config)
        tracer.classify_model(self.model)
        for t in getattr(getattr(self, "ewc_penalty", None), "__dict__", {}).values():
            if isinstance(t, dict):
                for v in t.values():
                    tracer.track(v, "ewc")
        return result

    EWCTrainerMixin._setup_ewc = setup_ewc
    try:
        return build_trainer(run_recipe)
    finally:
        EWCTrainerMixin._setup_ewc = original


def _estimate_for(recipe, num_layers: int, prompt_length=None):
    """The estimator's allocated figure (no CUDA constants) for the recipe at `num_layers` layers."""
    from trl_ext.memory import estimate_settings, load_architecture, settings_from_recipe

    settings = settings_from_recipe(recipe, prompt_length=prompt_length)
    if settings.use_vllm:
        settings = replace(settings, use_vllm=False)
    arch = replace(load_architecture(settings.model), num_layers=num_layers)
    return estimate_settings(arch, settings, 24e9)


def point_estimate(recipe_path, overrides: list[str], depth: int, length: int | None, prompt_length=None) -> float:
    """The estimator's allocated bytes at one traced point (`length` None: the recipe's own)."""
    from trl_ext.recipe import load_recipe

    recipe = load_recipe(recipe_path, list(overrides))
    extra, p_len = point_inputs(recipe, length, prompt_length) if length else ([], prompt_length)
    return _estimate_for(load_recipe(recipe_path, list(overrides) + extra), depth, p_len).allocated_bytes


def _check_axis(name: str, values: tuple[int, ...] | None, real: int) -> None:
    if not values:
        return
    if not 2 <= len(values) <= 3 or sorted(set(values)) != list(values) or values[0] < 1 or values[-1] > real:
        got = ",".join(map(str, values))
        raise ValueError(f"--{name} needs two or three increasing values in 1..{real}, got {got}.")


def trace_recipe(
    recipe_path,
    overrides: list[str] | None = None,
    steps: int = 2,
    depths: tuple[int, ...] | None = None,
    prompt_length: int | None = None,
    lengths: tuple[int, ...] | None = None,
) -> dict:
    """The traced peak of a recipe on CPU, directly or extrapolated in depth and/or length, next to the estimate.

    Args:
        recipe_path (`str`): recipe YAML.
        overrides (`list[str]` or `None`, *optional*): `--key value` recipe overrides.
        steps (`int`, *optional*, defaults to `2`): optimizer steps (two: the second runs with optimizer states).
        depths (`tuple[int, ...]` or `None`, *optional*): `None` traces the full depth; `(d1, d2)` traces two reduced
            depths and extrapolates linearly; `(d1, d2, d3)` also traces `d3` directly to validate the extrapolation.
        prompt_length (`int` or `None`, *optional*): GRPO/PPO prompt tokens; default as `trl-ext estimate`.
        lengths (`tuple[int, ...]` or `None`, *optional*): `None` traces the recipe's length; `(L1, L2)` traces two
            reduced values of its length key (`length_key`) and extrapolates; with `depths` the four traces of the
            grid are extrapolated bilinearly (`trl_ext.memory.extrapolate`). A third value is the validation point's.

    Returns:
        `dict`: `traced_peak_gib` (allocated, the quantity `max_memory_allocated` measures), `estimated_peak_gib` (the
        estimator's allocated figure), `phase`, `by_category_gib`, `phases` and `estimated_phases` (each phase's
        traced and estimated allocated peak), `reserved_incl_cuda_gib` (traced peak +
        `CUDA_CONSTANTS`), `estimated_reserved_gib`; with an extrapolation its points (`points_gib`, `point_seconds`,
        `points_estimate_ratio`: the estimate at the point's own depth and length over its trace),
        the bilinear coefficients of the peak phase (`coefficients_bytes`, on a 2 x 2 grid) and, with a third depth or
        length, `validation_point` (d3 and the last length, or d1 and L3) and `extrapolation_error`
        (extrapolated / traced - 1).
    """
    import time

    from trl_ext.memcheck_data import synthetic_lengths
    from trl_ext.memory import load_architecture, settings_from_recipe
    from trl_ext.memory.extrapolate import bilinear_coefficients, extrapolate_grid
    from trl_ext.memory.trace import CUDA_CONSTANTS, cuda_overhead_bytes
    from trl_ext.recipe import load_recipe

    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}.")
    overrides = list(overrides or [])
    recipe = load_recipe(recipe_path, overrides)
    arch = load_architecture(recipe.model.model_name_or_path)
    settings = settings_from_recipe(recipe, prompt_length=prompt_length)
    key = length_key(recipe)
    real_length = recipe_length(recipe, settings)
    _check_axis("depths", depths, arch.num_layers)
    _check_axis("lengths", lengths, real_length)
    if depths and depths[0] < 2 and recipe.method in GENERATING_METHODS:
        raise ValueError(
            f"--depths must start at 2 or more for a {recipe.method} recipe, got {','.join(map(str, depths))}: its "
            "generation runs without gradients, where the first layer's input (the embedding output, still held by "
            "the model) is a tensor that one more layer does not repeat, so 1 -> 2 layers is not a per-layer cost. "
            "Use --depths 2,3."
        )
    out: dict = {"recipe": str(recipe_path), "model": arch.name, "method": recipe.method, "steps": steps}
    seconds: dict = {}

    def at_length(n: int) -> tuple[list[str], int | None]:
        return point_inputs(recipe, n, prompt_length) if lengths else ([], prompt_length)

    def trace_at(d: int, n: int) -> dict:
        start = time.time()
        extra, p_len = at_length(n)
        result = trace_once(recipe_path, overrides + extra, steps, d if depths else None, p_len)
        seconds[_point_name(d or arch.num_layers, n, lengths)] = round(time.time() - start)
        return result

    if not depths and not lengths:
        traced = trace_once(recipe_path, overrides, steps, None, prompt_length)
        out["mode"] = f"direct, {arch.num_layers} layers"
    else:
        d_axis = tuple(depths[:2]) if depths else (arch.num_layers,)
        n_axis = tuple(lengths[:2]) if lengths else (real_length,)
        points = {(d, n): trace_at(d, n) for d in d_axis for n in n_axis}
        first = points[d_axis[0], n_axis[0]]
        traced = extrapolate_grid(points, arch.num_layers, real_length)
        traced["lengths"] = synthetic_lengths(recipe, prompt_length)
        traced["compute_dtype"], traced["notes"] = first["compute_dtype"], first["notes"]
        out["mode"] = "extrapolated from " + " x ".join(
            [f"{'/'.join(map(str, d_axis))} layers to {arch.num_layers}"] * bool(depths)
            + [f"{key} {'/'.join(map(str, n_axis))} to {real_length}"] * bool(lengths)
        )
        names = {k: _point_name(*k, lengths) for k in points}
        out["points_gib"] = {names[k]: round(p["peak_bytes"] / GiB, 4) for k, p in points.items()}
        out["points_by_category_gib"] = {
            names[k]: {c: round(v / GiB, 5) for c, v in p["by_category"].items() if v} for k, p in points.items()
        }
        out["points_estimate_ratio"] = {}  # the estimator at each traced point's own depth and length
        for k, p in points.items():
            est = point_estimate(recipe_path, overrides, k[0], k[1] if lengths else None, prompt_length)
            out["points_estimate_ratio"][names[k]] = round(est / p["peak_bytes"], 4)
        if len(d_axis) == 2 and len(n_axis) == 2:
            peak_phase = traced["phase"]
            coef = bilinear_coefficients({k: p["phases"][peak_phase]["peak_bytes"] for k, p in points.items()})
            out["coefficients_bytes"] = {
                "constant": round(coef["a"]),
                "per_layer": round(coef["b"]),
                "per_token": round(coef["c"], 1),
                "per_layer_per_token": round(coef["e"], 1),
            }
        if (depths and len(depths) > 2) or (lengths and len(lengths) > 2):
            # a third depth is checked at it; a third length alone at the first depth (the cheapest trace there)
            dc = (depths[-1] if len(depths) > 2 else depths[0]) if depths else None
            nc = lengths[-1] if lengths else real_length
            check = trace_at(dc, nc)
            predicted = extrapolate_grid(points, dc or arch.num_layers, nc)["peak_bytes"]
            name = _point_name(dc or arch.num_layers, nc, lengths)
            out["points_gib"][name] = round(check["peak_bytes"] / GiB, 4)
            out["validation_point"] = name
            out["extrapolation_error"] = round(predicted / check["peak_bytes"] - 1, 4)
        out["point_seconds"] = seconds
    est = _estimate_for(recipe, arch.num_layers, prompt_length)
    peak = traced["peak_bytes"]
    out.update(
        traced_peak_gib=round(peak / GiB, 4),
        estimated_peak_gib=round(est.allocated_bytes / GiB, 4),
        estimate_ratio=round(est.allocated_bytes / peak, 4),
        phase=traced["phase"],
        estimated_phase=est.peak_phase,
        by_category_gib={c: round(v / GiB, 4) for c, v in traced["by_category"].items()},
        phases={p: round(v["peak_bytes"] / GiB, 4) for p, v in traced["phases"].items()},
        estimated_phases={p: round(est.phase_allocated_bytes(p) / GiB, 4) for p in traced["phases"]},
        reserved_incl_cuda_gib=round((peak + cuda_overhead_bytes(peak)) / GiB, 3),
        estimated_reserved_gib=round(est.peak_bytes / GiB, 3),
        cuda_constants={k: {"value": v, "source": src} for k, (v, src) in CUDA_CONSTANTS.items()},
        lengths=traced["lengths"],
        compute_dtype=traced["compute_dtype"],
        notes=traced["notes"],
    )
    return out


def _point_name(depth: int, length: int, lengths) -> int | str:
    """A point's key in the output: its depth, or `"<depth>x<length>"` when lengths vary too."""
    return f"{depth}x{length}" if lengths else depth


def format_trace(result: dict) -> str:
    """Two lines a person reads: the allocated peak (traced vs estimated) and the reserved figure incl. CUDA."""
    cats = ", ".join(f"{c} {v:.3f}" for c, v in result["by_category_gib"].items() if v)
    return (
        f"{result['recipe']}: traced on CPU ({result['mode']}, {result['compute_dtype']}), peak during "
        f"{result['phase']}\n"
        f"  allocated: traced {result['traced_peak_gib']:.3f} GiB, estimated {result['estimated_peak_gib']:.3f} GiB "
        f"(x{result['estimate_ratio']:.2f}); by category (GiB): {cats}\n"
        f"  reserved incl. CUDA context: {result['reserved_incl_cuda_gib']:.2f} GiB traced + constants, "
        f"{result['estimated_reserved_gib']:.2f} GiB estimated"
        + (
            f"\n  extrapolation checked at {result['validation_point']} traced directly: "
            f"{result['extrapolation_error']:+.1%}"
            if "extrapolation_error" in result
            else ""
        )
        + "".join(f"\n  note: {n}" for n in result["notes"])
    )
