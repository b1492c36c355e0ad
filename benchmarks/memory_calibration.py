"""Estimate vs CPU trace: `trl-ext memcheck --device cpu` for every method at three lengths, on two architectures.

    python benchmarks/memory_calibration.py [--models tiny qwen0.5b] [--methods dpo kto sft reward grpo ppo]
        [--out benchmarks/results/memory_calibration.json]

Each point runs two real optimizer steps of `recipes/quickstart/<method>.yaml` on random weights (bf16 compute, as
on a GPU) and records the traced allocated peak, the estimator's allocated figure, their ratio (the estimator must
stay within 0.9-1.1) and the per-category breakdown of both. `tiny`: the bundled tiny-chat, traced directly.
`qwen0.5b`: Qwen2.5-0.5B-Instruct's architecture (bundled config; 24 layers, 152k vocabulary), traced at 1 and 2
layers (GRPO/PPO: 2 and 3, `trl_ext.memcheck_lengths.GENERATING_METHODS`) and extrapolated linearly to 24
(`trl_ext.memory.trace.extrapolate_depth`), one sequence (pair) per micro-batch; `qwen0.5b-checkpointing`: the same
with gradient checkpointing. Points of earlier runs at other lengths are kept (`--lengths` adds or replaces points).
The slow traces live here, not in the test suite;
`benchmarks/results/memory_calibration.md` is the table written from the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

from trl_ext.memcheck_cpu import trace_recipe

REPO = Path(__file__).resolve().parents[1]
#: method -> (length key, lengths)
SWEEPS = {
    "dpo": ("max_length", (64, 128, 256)),
    "kto": ("max_length", (64, 128, 256)),
    "sft": ("max_length", (64, 128, 256)),
    "reward": ("max_length", (64, 128, 256)),
    "grpo": ("max_completion_length", (32, 64, 128)),
    "ppo": ("max_completion_length", (32, 64, 128)),
}
#: model -> (overrides, depths)
MODELS = {
    "tiny": ([], None),
    "qwen0.5b": (["--model_name_or_path", "Qwen/Qwen2.5-0.5B-Instruct", "--per_device_train_batch_size", "1"], (1, 2)),
    "qwen0.5b-checkpointing": (
        ["--model_name_or_path", "Qwen/Qwen2.5-0.5B-Instruct", "--per_device_train_batch_size", "1"]
        + ["--gradient_checkpointing", "true"],
        (1, 2),
    ),
}
PROMPT_LENGTH = 64  # GRPO/PPO prompt tokens
#: Methods whose batch must hold more than one sequence on the real architectures (batch 1 above): GRPO needs a whole
#: group per generation batch, KTO a micro-batch of at least 2.
METHOD_OVERRIDES = {
    "grpo": ["--per_device_train_batch_size", "2", "--num_generations", "2"],
    "kto": ["--per_device_train_batch_size", "2"],
}


def model_overrides(model: str, method: str) -> list[str]:
    """The recipe overrides of one calibration point's model (and of its method on the real architectures)."""
    extra, depths = MODELS[model]
    return [*extra, *(METHOD_OVERRIDES.get(method, []) if depths else [])]


def _estimate_components(recipe_path, overrides) -> dict:
    from trl_ext.memcheck_cpu import _estimate_for
    from trl_ext.memory import load_architecture
    from trl_ext.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    est = _estimate_for(recipe, load_architecture(recipe.model.model_name_or_path).num_layers, PROMPT_LENGTH)
    return {c.name: round(c.bytes / 2**20, 2) for c in est.components if c.phase in ("static", est.peak_phase)}


def run_point(model: str, method: str, n: int) -> dict:
    from trl_ext.memcheck_lengths import GENERATING_METHODS

    key = SWEEPS[method][0]
    depths = MODELS[model][1]
    if depths and method in GENERATING_METHODS:  # their depth axis starts at 2 (generation holds the embedding output)
        depths = tuple(d + 1 for d in depths)
    overrides = [*model_overrides(model, method), f"--{key}", str(n)]
    recipe = REPO / "recipes" / "quickstart" / f"{method}.yaml"
    start = time.time()
    r = trace_recipe(recipe, overrides, depths=depths, prompt_length=PROMPT_LENGTH)
    return {
        key: n,
        "traced_peak_mib": round(r["traced_peak_gib"] * 1024, 2),
        "estimated_mib": round(r["estimated_peak_gib"] * 1024, 2),
        "ratio": r["estimate_ratio"],
        "phase": r["phase"],
        "estimated_phase": r["estimated_phase"],
        "by_category_mib": {c: round(v * 1024, 2) for c, v in r["by_category_gib"].items() if v},
        "estimate_components_mib": _estimate_components(recipe, overrides),
        **({"points_mib": {d: round(v * 1024, 2) for d, v in r["points_gib"].items()}} if depths else {}),
        **(
            {
                "points_by_category_mib": {
                    d: {c: round(v * 1024, 2) for c, v in cats.items()}
                    for d, cats in r["points_by_category_gib"].items()
                }
            }
            if depths
            else {}
        ),
        "seconds": round(time.time() - start),
    }


def reestimate(results: dict) -> None:
    """Recompute every stored point's estimate (and ratio) with today's estimator; the traces stay as measured."""
    from trl_ext.memcheck_cpu import _estimate_for
    from trl_ext.memory import load_architecture
    from trl_ext.recipe import load_recipe

    for model, methods in results.items():
        if model == "meta":
            continue
        for method, entry in methods.items():
            key = SWEEPS[method][0]
            for p in entry["points"]:
                overrides = [*entry.get("overrides", []), f"--{key}", str(p[key])]
                path = REPO / entry["recipe"]
                recipe = load_recipe(path, overrides)
                est = _estimate_for(
                    recipe, load_architecture(recipe.model.model_name_or_path).num_layers, PROMPT_LENGTH
                )
                p["estimated_mib"] = round(est.allocated_bytes / 2**20, 2)
                p["ratio"] = round(est.allocated_bytes / 2**20 / p["traced_peak_mib"], 4)
                p["estimated_phase"] = est.peak_phase
                p["estimate_components_mib"] = _estimate_components(path, overrides)


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Memory estimate vs CPU trace (allocated)",
        "",
        "`python benchmarks/memory_calibration.py` (two optimizer steps per point, bf16 compute, LoRA r=16 on all "
        "linears, 4-bit NF4; GRPO/PPO prompts of 64 tokens). Machine: 2 CPU cores, shared.",
        "",
        "| model | method | lengths | traced peak (MiB) | estimate / trace |",
        "|---|---|---|---|---|",
    ]
    for model, methods in results.items():
        if not isinstance(methods, dict) or model == "meta":
            continue
        for method, entry in methods.items():
            key = SWEEPS[method][0]
            pts = entry["points"]
            lengths = " / ".join(str(p[key]) for p in pts)
            traced = " / ".join(f"{p['traced_peak_mib']:.1f}" for p in pts)
            ratios = " / ".join(f"{p['ratio']:.2f}" for p in pts)
            lines.append(f"| {model} | {method} | {key} {lengths} | {traced} | {ratios} |")
    meta = results.get("meta", {})
    lines += ["", f"Date: {meta.get('date', '?')}; machine: {meta.get('machine', '?')}."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(SWEEPS))
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="override every method's lengths")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_calibration.json"))
    parser.add_argument("--reestimate", action="store_true", help="recompute the stored points' estimates, no trace")
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results = {k: v for k, v in results.items() if k in (*MODELS, "meta")}  # older files: one model, flat
    if args.reestimate:
        reestimate(results)
        out.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out.with_suffix(".md"))
        for model, methods in results.items():
            for method, entry in methods.items() if model != "meta" else ():
                print(model, method, [p["ratio"] for p in entry["points"]])
        return
    for model in args.models:
        for method in args.methods:
            rows = [run_point(model, method, n) for n in (args.lengths or SWEEPS[method][1])]
            for row in rows:
                print(model, method, row, flush=True)
            earlier = results.get(model, {}).get(method, {}).get("points", [])
            key = SWEEPS[method][0]
            rows = sorted([p for p in earlier if p[key] not in {r[key] for r in rows}] + rows, key=lambda p: p[key])
            results.setdefault(model, {})[method] = {
                "date": datetime.date.today().isoformat(),
                "recipe": f"recipes/quickstart/{method}.yaml",
                "overrides": model_overrides(model, method),
                "depths": MODELS[model][1],
                "points": rows,
            }
            results["meta"] = {
                "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()}, 2 CPU cores (shared), torch CPU",
                "command": "python benchmarks/memory_calibration.py",
            }
            out.write_text(json.dumps(results, indent=2) + "\n")
            write_markdown(results, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
