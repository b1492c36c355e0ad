"""Longest sequence on one 24 GB card, traced: Llama-3.1-8B QLoRA SFT and DPO, checkpointing, reduced depth and length.

    python benchmarks/memory_long_context_traced.py [--variants fused full_logits fused_offload dpo_fused]
        [--lengths 512,1024]
        [--validate 2048]
        -> benchmarks/results/memory_long_context_traced.json

`benchmarks/memory_long_context.py` finds the longest sequence from the estimator alone. This script traces the same
setting -- Llama-3.1-8B-Instruct's architecture, 4-bit NF4, LoRA r=16 on all linears, batch 1, gradient
checkpointing, paged 8-bit AdamW, SFT with the loss on every position -- on a CPU (`trl-ext memcheck --device cpu`)
on a depth x length grid, fits every category of the traced peak bilinearly (`a + b*d + c*L + e*d*L`), and solves
for the longest length (multiple of 256) whose traced peak at 32 layers plus the CUDA constants
(`trl_ext.memory.trace.cuda_overhead_bytes`) stays <= 22 GiB. The fused LM head's tile is `min(L, 4096) x 32768`
(TRL's chunk sizes), so the `logits` category is held at its 4,096-token value beyond that; everything else is
linear in length (attention runs through torch's flash kernel on the CPU, as FlashAttention/SDPA on a GPU).
The estimator's longest length for the same recipe is computed beside it.

Variants: `fused` (TRL's fused LM head), `full_logits` (the head's full `(tokens, vocabulary)` logits, through SFT's
label-smoothing path, which needs them; that path also runs a no-grad fused forward for its metrics, one head tile
more than the estimate's full-logits trainer) and `fused_offload` (TRL's activation offloading, emulated on the CPU:
`trl_ext.memory.trace.EmulatedOffload`; traced at 3 and 5 layers, where the offloaded layer inputs outnumber the
ones in flight); `dpo_fused` is DPO (`recipes/quickstart/dpo.yaml` with the same settings: one pair of `max_length`
tokens per sequence, a quarter of each prompt, the rest scored). `--model builtin:tiny-chat` is the smoke test
(seconds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

from trl_ext.memcheck_cpu import trace_recipe
from trl_ext.memory import load_architecture
from trl_ext.memory.terms import FUSED_TOKEN_TILE  # the fused head's tile stops growing at this many tokens

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart"
BASE = [
    "--model_name_or_path",
    "meta-llama/Llama-3.1-8B-Instruct",
    "--per_device_train_batch_size",
    "1",
    "--gradient_accumulation_steps",
    "2",
    "--gradient_checkpointing",
    "true",
    "--optim",
    "paged_adamw_8bit",
    "--bf16",
    "true",
    "--max_length",
    "{length}",
]
#: SFT with the loss on every position (synthetic rows are prompt/completion)
SFT = ["--completion_only_loss", "false", "--assistant_only_loss", "false"]
#: DPO: a pair of `max_length`-token sequences (chosen, rejected), the last 3/4 of each (the completion) scored, so
#: the fused head's 4,096-token tile is full from 4096 / 1.5 tokens per sequence on
DPO_TILE_FULL_AT = FUSED_TOKEN_TILE / 1.5
#: variant -> (method, overrides, depths of the grid, length (per sequence) from which the fused head's tile stops
#: growing; None: full logits, linear in length)
VARIANTS = {
    "fused": ("sft", SFT, (1, 2), FUSED_TOKEN_TILE),
    "full_logits": ("sft", SFT + ["--label_smoothing_factor", "0.1"], (1, 2), None),
    "fused_offload": ("sft", SFT + ["--activation_offloading", "true"], (3, 5), FUSED_TOKEN_TILE),
    "dpo_fused": ("dpo", [], (1, 2), DPO_TILE_FULL_AT),
}


def recipe_of(variant: str) -> Path:
    return QUICKSTART / f"{VARIANTS[variant][0]}.yaml"


LENGTHS = [512, 1024]  # the grid's lengths (--lengths)
TARGET = 32768  # the recipe length the trace extrapolates to (the longest fitting one is solved for separately)
BUDGET_GIB = 22


def longest_fitting(peak) -> tuple[int, float]:
    """Longest multiple of 256 whose `peak(length)` (allocated bytes) + CUDA constants fits, and that peak (GiB)."""
    from trl_ext.memory.trace import cuda_overhead_bytes

    lo, hi = 256, 1 << 18
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        lo, hi = (mid, hi) if peak(mid) + cuda_overhead_bytes(peak(mid)) <= BUDGET_GIB * 2**30 else (lo, mid)
    return lo, round(peak(lo) / 2**30, 3)


def longest_head_moment(points_by_category: dict, depths, num_layers: int, tile_full_at) -> tuple[int, float]:
    """Longest length by the grid's fit alone (the LM head's moment), and the peak there (GiB): too long wherever a
    layer's backward sets the peak instead (`--long-points` traces that moment)."""
    return longest_fitting(head_moment(points_by_category, depths, num_layers, tile_full_at))


def longest_with_layer_moment(entry: dict, depths, num_layers: int, tile_full_at) -> tuple[int, float]:
    """Longest length whose traced peak + CUDA constants fits, taking the larger of two moments of the step.

    The grid's lengths are short enough that the LM head's backward sets the peak; at tens of thousands of tokens a
    layer's backward (its recomputed activations) does instead, which no short trace shows. `long_points` are traces
    at the first depth and long lengths, where it does: their line in length, plus the grid's per-layer terms (4-bit
    weights and the saved input of every other layer) for the other layers, is the layer moment at full depth.
    """
    (t1, p1), (t2, p2) = sorted((int(t), v["peak_gib"] * 2**30) for t, v in entry["long_points"].items())
    slope = (p2 - p1) / (t2 - t1)
    coef = entry["traced"]["coefficients_bytes"]
    head = head_moment(entry["traced"]["points_by_category_gib"], depths, num_layers, tile_full_at)

    def peak(length: int) -> float:
        layer = p1 + slope * (length - t1)
        layer += (num_layers - depths[0]) * (coef["per_layer"] + coef["per_layer_per_token"] * length)
        return max(layer, head(length))

    return longest_fitting(peak)


def head_moment(points_by_category: dict, depths, num_layers: int, tile_full_at):
    """The grid's per-category fit at `num_layers` as a function of length (the LM head's moment); the fused head's
    `logits` stop growing at `tile_full_at` tokens per sequence (None: full logits grow with length)."""
    from trl_ext.memory.extrapolate import bilinear_coefficients

    cats = {c for point in points_by_category.values() for c in point}
    coef = {
        c: bilinear_coefficients(
            {(d, n): points_by_category[f"{d}x{n}"].get(c, 0.0) * 2**30 for d in depths for n in LENGTHS}
        )
        for c in cats
    }

    def peak(length: int) -> float:
        total = 0.0
        for c, k in coef.items():
            n = min(length, tile_full_at) if tile_full_at and c == "logits" else length
            total += k["a"] + k["b"] * num_layers + (k["c"] + k["e"] * num_layers) * n
        return total

    return peak


def run_long_points(variant: str, entry: dict, lengths: list[int], num_layers: int) -> None:
    """Trace the variant at its first depth and each of `lengths` (one optimizer step) and solve again."""
    from trl_ext.memcheck_cpu import _estimate_for, trace_once
    from trl_ext.recipe import load_recipe

    _, extra, depths, tile_full_at = VARIANTS[variant]
    recipe = recipe_of(variant)
    entry["long_points"] = {}
    for n in lengths:
        overrides = [o.replace("{length}", str(n)) for o in BASE] + extra
        start = time.time()
        r = trace_once(recipe, overrides, steps=1, num_layers=depths[0])
        est = _estimate_for(load_recipe(recipe, overrides), depths[0]).allocated_bytes
        entry["long_points"][str(n)] = {
            "depth": depths[0],
            "peak_gib": round(r["peak_bytes"] / 2**30, 4),
            "by_category_gib": {c: round(v / 2**30, 4) for c, v in r["by_category"].items() if v},
            "estimate_ratio": round(est / r["peak_bytes"], 4),
            "seconds": round(time.time() - start),
        }
        print(variant, n, json.dumps(entry["long_points"][str(n)]), flush=True)
    fit = head_moment(entry["traced"]["points_by_category_gib"], depths, depths[0], tile_full_at)
    for n, point in entry["long_points"].items():
        point["head_moment_fit_gib"] = round(fit(int(n)) / 2**30, 4)
    tokens, peak = longest_with_layer_moment(entry, depths, num_layers, tile_full_at)
    entry["longest_traced_tokens"], entry["traced_peak_there_gib"] = tokens, peak
    entry["longest_traced_method"] = "max of the grid's LM-head moment and the long points' layer moment"
    entry["longest_estimated_tokens"] = longest_estimated(
        recipe, [o.replace("{length}", str(tokens)) for o in BASE] + extra, tile_full_at is None
    )


def longest_estimated(recipe: Path, overrides: list[str], full_logits: bool) -> int:
    """The estimator's longest length for the same recipe (its allocated figure + the same CUDA constants)."""
    from trl_ext.memory import estimate_settings, load_architecture, settings_from_recipe
    from trl_ext.recipe import load_recipe

    s = settings_from_recipe(load_recipe(recipe, overrides), full_logits=full_logits)
    s = replace(s, sft_completion_only=False)
    arch = load_architecture(s.model)
    return longest_fitting(lambda n: estimate_settings(arch, replace(s, max_length=n), 24e9).allocated_bytes)[0]


def estimate_grid(recipe_path: Path, overrides: list[str], full_logits: bool, depths) -> dict:
    """The estimator's allocated bytes on the traced grid, and its bilinear coefficients."""
    from trl_ext.memory import estimate_settings, load_architecture, settings_from_recipe
    from trl_ext.memory.extrapolate import bilinear_coefficients
    from trl_ext.recipe import load_recipe

    values = {}
    for n in LENGTHS:
        recipe = load_recipe(recipe_path, [o.replace("{length}", str(n)) for o in overrides])
        s = replace(settings_from_recipe(recipe, full_logits=full_logits), sft_completion_only=False)
        for d in depths:
            arch = replace(load_architecture(s.model), num_layers=d)
            values[d, n] = estimate_settings(arch, s, 24e9).allocated_bytes
    coef = bilinear_coefficients(values)
    return {
        "points_gib": {f"{d}x{n}": round(v / 2**30, 4) for (d, n), v in values.items()},
        "coefficients_bytes": {
            "constant": round(coef["a"]),
            "per_layer": round(coef["b"]),
            "per_token": round(coef["c"], 1),
            "per_layer_per_token": round(coef["e"], 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct", help="architecture (a smoke test: tiny)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_long_context_traced.json"))
    parser.add_argument("--lengths", default="512,1024", help="the grid's two lengths")
    parser.add_argument("--validate", type=int, default=None, help="also trace this length at the first depth")
    parser.add_argument(
        "--long-points",
        default=None,
        help="L1,L2: trace the stored grid's first depth at two long lengths (a layer's backward sets the peak there) "
        "and solve for the longest length again",
    )
    args = parser.parse_args()
    BASE[BASE.index("--model_name_or_path") + 1] = args.model
    LENGTHS[:] = [int(n) for n in args.lengths.split(",")]
    lengths = tuple(LENGTHS) + ((args.validate,) if args.validate else ())
    out = Path(args.out)
    if args.long_points:
        results = json.loads(out.read_text())
        num_layers = load_architecture(args.model).num_layers
        for variant in args.variants:
            run_long_points(variant, results[variant], [int(n) for n in args.long_points.split(",")], num_layers)
            out.write_text(json.dumps(results, indent=2) + "\n")
        return
    for variant in args.variants:
        _, extra, depths, tile_full_at = VARIANTS[variant]
        recipe, full = recipe_of(variant), tile_full_at is None
        overrides = [o.replace("{length}", str(TARGET)) for o in BASE] + extra
        start = time.time()
        r = trace_recipe(recipe, overrides, depths=depths, lengths=lengths)
        est = estimate_grid(recipe, BASE + extra, full_logits=full, depths=depths)
        num_layers = load_architecture(args.model).num_layers
        tokens, peak = longest_head_moment(r["points_by_category_gib"], depths, num_layers, tile_full_at)
        entry = {
            "date": datetime.date.today().isoformat(),
            "command": f"trl-ext memcheck {recipe.relative_to(REPO)} --device cpu "
            f"--depths {','.join(map(str, depths))} --lengths {','.join(map(str, lengths))} " + " ".join(overrides),
            "seconds": round(time.time() - start),
            "traced": {
                k: r.get(k)
                for k in (
                    "points_gib",
                    "points_by_category_gib",
                    "coefficients_bytes",
                    "point_seconds",
                    "validation_point",
                    "extrapolation_error",
                )
            },
            "estimated": est,
            "longest_head_moment_tokens": tokens,
            "head_moment_peak_there_gib": peak,
            "longest_estimated_tokens": longest_estimated(
                recipe, [o.replace("{length}", str(tokens)) for o in BASE] + extra, full
            ),
            "per_layer_per_token_ratio": round(
                est["coefficients_bytes"]["per_layer_per_token"] / r["coefficients_bytes"]["per_layer_per_token"], 4
            ),
            "per_token_ratio": round(est["coefficients_bytes"]["per_token"] / r["coefficients_bytes"]["per_token"], 4),
            "points_estimate_ratio": {
                k: round(est["points_gib"][k] / v, 4) for k, v in r["points_gib"].items() if k in est["points_gib"]
            },
        }
        print(variant, json.dumps(entry), flush=True)
        results = json.loads(out.read_text()) if out.exists() else {}
        results[variant] = entry
        results["meta"] = {
            "machine": f"{platform.machine()}, 2 CPU cores (shared), torch CPU",
            "budget_gib": BUDGET_GIB,
            **{k: v for k, v in results.get("meta", {}).items() if k not in ("machine", "budget_gib")},
        }
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
