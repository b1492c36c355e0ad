"""Traced peak (CPU) of the 24 GB presets: reduced depth x reduced length, extrapolated bilinearly, vs the estimate.

    python benchmarks/memory_presets_traced.py [--presets dpo/qwen2.5-7b-qlora ...] [--validate]
        [--out benchmarks/results/memory_presets_traced.json]

Each preset runs as `trl-ext memcheck recipes/<preset>.yaml --device cpu --depths D1,D2 --lengths L1,L2` (the grid
below): four traces of two real optimizer steps on random weights of the preset's architecture at two reduced depths
(1-2 decoder layers; GRPO/PPO 2-3, see `trl_ext.memcheck_lengths.GENERATING_METHODS`) and two reduced lengths (the
recipe's `max_length`; GRPO/PPO: `max_completion_length` with the prompt in proportion), every phase and category
extrapolated bilinearly to the real depth and length (`trl_ext.memory.extrapolate`). `--validate` adds the preset's
third length, traced directly at the first depth, or at the third depth where the grid lists one
(`extrapolation_error`). Each trace runs 2 micro-batches of gradient accumulation per optimizer step instead of the
preset's 8 (`--gradient_accumulation_steps 2`; GRPO keeps its generation batch through `--steps_per_generation`):
the same tensors are alive (the second micro-batch holds the first one's adapter gradients), at a quarter of the
time. Results are merged into the JSON (one entry per preset) and `benchmarks/results/memory_presets_traced.md`.
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
GA2 = ["--gradient_accumulation_steps", "2"]
#: preset -> (overrides, depths, lengths, validation length). Cheapest first. GRPO/PPO start at 2 layers (their
#: generation holds the embedding output through layer 1: `trl_ext.memcheck_lengths.GENERATING_METHODS`); a third depth
#: is validated with the third length, at (d3, L3).
PRESETS = {
    "grpo/qwen2.5-1.5b-qlora-query-rewrite": (GA2 + ["--steps_per_generation", "4"], (2, 3, 4), (16, 32), 64),
    "ppo/qwen2.5-1.5b-lora": ([], (2, 3, 4), (16, 32), 64),
    "dpo/qwen2.5-7b-qlora": (GA2, (1, 2), (128, 256), 512),
    "kto/qwen2.5-7b-qlora": (GA2, (1, 2), (128, 256), 512),
    "dpo/llama3.1-8b-qlora": (GA2, (1, 2), (128, 256), 512),
    "dpo/llama3.1-8b-qlora-ewc": (GA2, (1, 2), (128, 256), 512),
    "grpo/qwen2.5-7b-query-rewrite": (GA2 + ["--steps_per_generation", "8"], (2, 3), (12, 24), 48),
    "ppo/qwen2.5-7b-qlora": ([], (2, 3), (16, 32), 64),
}
KEEP = (
    "mode",
    "traced_peak_gib",
    "estimated_peak_gib",
    "estimate_ratio",
    "phase",
    "estimated_phase",
    "by_category_gib",
    "phases",
    "estimated_phases",
    "reserved_incl_cuda_gib",
    "estimated_reserved_gib",
    "points_gib",
    "points_by_category_gib",
    "points_estimate_ratio",
    "point_seconds",
    "coefficients_bytes",
    "validation_point",
    "extrapolation_error",
    "lengths",
    "notes",
)


def command(preset: str, validate: bool) -> str:
    overrides, depths, lengths, check = PRESETS[preset]
    lens = [*lengths, check] if validate else list(lengths)
    return (
        f"trl-ext memcheck recipes/{preset}.yaml --device cpu --depths {','.join(map(str, depths))} "
        f"--lengths {','.join(map(str, lens))} {' '.join(overrides)} --json"
    ).strip()


def run(preset: str, validate: bool) -> dict:
    overrides, depths, lengths, check = PRESETS[preset]
    start = time.time()
    r = trace_recipe(
        REPO / "recipes" / f"{preset}.yaml",
        list(overrides),
        depths=depths,
        lengths=(*lengths, check) if validate else lengths,
    )
    return {
        "date": datetime.date.today().isoformat(),
        "command": command(preset, validate),
        "seconds": round(time.time() - start),
        **{k: r[k] for k in KEEP if k in r},
    }


def reestimate(results: dict) -> None:
    """Recompute every stored entry's estimates (real settings and each point) with today's estimator."""
    from trl_ext.memcheck_cpu import _estimate_for, point_estimate
    from trl_ext.memory import load_architecture
    from trl_ext.recipe import load_recipe

    for preset, r in results.items():
        if preset == "meta":
            continue
        path = REPO / "recipes" / f"{preset}.yaml"
        overrides = list(PRESETS[preset][0])
        recipe = load_recipe(path, overrides)
        est = _estimate_for(recipe, load_architecture(recipe.model.model_name_or_path).num_layers)
        r["estimated_peak_gib"] = round(est.allocated_bytes / 2**30, 4)
        r["estimate_ratio"] = round(est.allocated_bytes / 2**30 / r["traced_peak_gib"], 4)
        r["estimated_phase"] = est.peak_phase
        r["estimated_phases"] = {p: round(est.phase_allocated_bytes(p) / 2**30, 4) for p in r.get("phases", {})}
        for name, traced in r.get("points_gib", {}).items():
            if name in r.get("points_estimate_ratio", {}):
                d, n = (int(v) for v in name.split("x"))
                r["points_estimate_ratio"][name] = round(point_estimate(path, overrides, d, n) / 2**30 / traced, 4)


def validate_at(preset: str, r: dict, length: int) -> None:
    """Trace a stored grid's preset at (first depth, `length`) directly and record how far its fit was off.

    The prediction is the bilinear fit of the stored points' peaks (the tool's own for presets whose every point peaks
    in the same phase, as DPO/KTO do).
    """
    from trl_ext.memcheck_cpu import trace_once
    from trl_ext.memcheck_lengths import point_inputs
    from trl_ext.memory.extrapolate import bilinear_coefficients
    from trl_ext.recipe import load_recipe

    overrides, depths, _, _ = PRESETS[preset]
    path = REPO / "recipes" / f"{preset}.yaml"
    start = time.time()
    extra, p_len = point_inputs(load_recipe(path, list(overrides)), length)
    traced = trace_once(path, list(overrides) + extra, 2, depths[0], p_len)["peak_bytes"] / 2**30
    grid = {
        tuple(int(v) for v in k.split("x")): v for k, v in r["points_gib"].items() if k != r.get("validation_point")
    }
    c = bilinear_coefficients(grid)  # GiB; the fit itself, unrounded
    predicted = c["a"] + c["b"] * depths[0] + c["c"] * length + c["e"] * depths[0] * length
    name = f"{depths[0]}x{length}"
    r["points_gib"][name] = round(traced, 4)
    r["point_seconds"][name] = round(time.time() - start)
    r["validation_point"] = name
    r["extrapolation_error"] = round(predicted / traced - 1, 4)
    r["command"] = r["command"].replace(" --lengths 128,256 ", f" --lengths 128,256,{length} ")


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        "# Presets: traced peak (CPU, extrapolated) vs estimate (allocated)",
        "",
        "`python benchmarks/memory_presets_traced.py` (each row's command below). Machine: "
        f"{results.get('meta', {}).get('machine', '?')}.",
        "",
        "| preset | traced peak (GiB) | phase | estimate (GiB) | estimate / trace | extrapolation error | trace time |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, r in results.items():
        if preset == "meta":
            continue
        err = r.get("extrapolation_error")
        err_s = f"{err:+.1%} at {r['validation_point']}" if err is not None else "-"
        lines.append(
            f"| `{preset}` | {r['traced_peak_gib']:.2f} | {r['phase']} | {r['estimated_peak_gib']:.2f} | "
            f"{r['estimate_ratio']:.3f} | {err_s} | {r['seconds'] / 60:.0f} min |"
        )
    lines += [""] + [f"- `{p}` ({r['date']}): `{r['command']}`" for p, r in results.items() if p != "meta"]
    not_traced = results.get("meta", {}).get("not_traced", {})
    lines += [""] * bool(not_traced) + [f"- not traced, `{p}`: {why}" for p, why in not_traced.items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--validate", action="store_true", help="trace a third length directly")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_presets_traced.json"))
    parser.add_argument("--validate-at", type=int, default=None, help="trace a stored grid at (d1, LENGTH) only")
    parser.add_argument("--reestimate", action="store_true", help="recompute the stored estimates, no trace")
    args = parser.parse_args()
    out = Path(args.out)
    if args.validate_at:
        results = json.loads(out.read_text())
        for preset in args.presets:
            validate_at(preset, results[preset], args.validate_at)
            print(preset, results[preset]["extrapolation_error"], flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
            write_markdown(results, out.with_suffix(".md"))
        return
    if args.reestimate:
        results = json.loads(out.read_text())
        reestimate(results)
        out.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out.with_suffix(".md"))
        return
    for preset in args.presets:
        entry = run(preset, args.validate)
        print(preset, json.dumps(entry), flush=True)
        results = json.loads(out.read_text()) if out.exists() else {}
        results[preset] = entry
        meta = results.setdefault("meta", {})  # keeps what earlier runs recorded
        meta.setdefault("machine", f"{platform.machine()}, 2 CPU cores (shared), torch CPU")
        meta.get("not_traced", {}).pop(preset, None)
        results = {k: results[k] for k in sorted(results, key=lambda k: (k == "meta", k))}
        out.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
