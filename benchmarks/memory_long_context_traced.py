"""Per-token slopes of the long-context table, traced: Llama-3.1-8B QLoRA SFT, checkpointing, reduced depth and length.

    python benchmarks/memory_long_context_traced.py [--variants fused full_logits]
        -> benchmarks/results/memory_long_context_traced.json

`benchmarks/memory_long_context.py` finds the longest sequence on a 24 GB card from the estimator alone. This script
traces the same setting -- Llama-3.1-8B-Instruct's architecture, 4-bit NF4, LoRA r=16 on all linears, batch 1,
gradient checkpointing, paged 8-bit AdamW, SFT with the loss on every position -- on a CPU
(`trl-ext memcheck --device cpu`) at 1 and 2 decoder layers x two lengths, and compares the bilinear coefficients
of the traced peak (`a + b*d + c*L + e*d*L`: `e` the bytes per layer per token, `c` per token outside the layers)
with the estimator's, evaluated on the same grid. Variants: `fused` (TRL's fused LM head) and `full_logits` (the
head's full `(tokens, vocabulary)` logits, through SFT's label-smoothing path, which needs them; estimated with
`full_logits`; that path also runs a no-grad fused forward for its metrics, one head tile more than the estimate's
full-logits trainer: compare its per-token slope, not its total). `--model builtin:tiny-chat` is the smoke test
(seconds). Activation offloading is not traced: TRL's `OffloadActivations` leaves every tensor that is not on
an accelerator where it is, so on a CPU it changes nothing.
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

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart" / "sft.yaml"
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
    "--completion_only_loss",
    "false",
    "--assistant_only_loss",
    "false",
    "--max_length",
    "{length}",
]
VARIANTS = {"fused": [], "full_logits": ["--label_smoothing_factor", "0.1"]}
DEPTHS = (1, 2)
LENGTHS = (256, 512)
TARGET = 1024  # the extrapolation target of the trace (its own grid point is not traced)


def estimate_grid(overrides: list[str], full_logits: bool) -> dict:
    """The estimator's allocated bytes on the traced grid, and its bilinear coefficients."""
    from trl_ext.memory import estimate_settings, load_architecture, settings_from_recipe
    from trl_ext.memory.extrapolate import bilinear_coefficients
    from trl_ext.recipe import load_recipe

    values = {}
    for n in LENGTHS:
        recipe = load_recipe(RECIPE, [o.replace("{length}", str(n)) for o in overrides])
        s = replace(settings_from_recipe(recipe, full_logits=full_logits), sft_completion_only=False)
        for d in DEPTHS:
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
    args = parser.parse_args()
    BASE[BASE.index("--model_name_or_path") + 1] = args.model
    out = Path(args.out)
    for variant in args.variants:
        overrides = [o.replace("{length}", str(TARGET)) for o in BASE] + VARIANTS[variant]
        start = time.time()
        r = trace_recipe(RECIPE, overrides, depths=DEPTHS, lengths=LENGTHS)
        est = estimate_grid(BASE + VARIANTS[variant], full_logits=variant == "full_logits")
        entry = {
            "date": datetime.date.today().isoformat(),
            "command": f"trl-ext memcheck {RECIPE.relative_to(REPO)} --device cpu --depths 1,2 --lengths 256,512 "
            + " ".join(overrides),
            "seconds": round(time.time() - start),
            "traced": {k: r.get(k) for k in ("points_gib", "coefficients_bytes", "point_seconds", "phase")},
            "estimated": est,
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
        results["meta"] = {"machine": f"{platform.machine()}, 2 CPU cores (shared), torch CPU, 1 thread"}
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
