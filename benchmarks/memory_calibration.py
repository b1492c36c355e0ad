"""Estimate vs CPU trace: `trl-ext memcheck --device cpu` on the quickstart recipes at several lengths.

    python benchmarks/memory_calibration.py [--methods dpo kto ppo] [--out benchmarks/results/memory_calibration.json]

Each point runs two real optimizer steps of the recipe on a random-weight tiny-chat (bf16 compute, as on a GPU) and
records the traced allocated peak, the estimator's allocated figure and their ratio (the estimator must stay within
0.9-1.1). Slow traces live here, not in the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from trl_ext.memcheck_cpu import trace_recipe

REPO = Path(__file__).resolve().parents[1]
#: method -> (length key, lengths)
SWEEPS = {
    "dpo": ("max_length", (64, 128, 256)),
    "kto": ("max_length", (64, 128, 256)),
    "grpo": ("max_completion_length", (32, 64, 128)),
    "ppo": ("max_completion_length", (32, 64, 128)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(SWEEPS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_calibration.json"))
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for method in args.methods:
        key, lengths = SWEEPS[method]
        rows = []
        for n in lengths:
            r = trace_recipe(REPO / "recipes" / "quickstart" / f"{method}.yaml", [f"--{key}", str(n)], prompt_length=64)
            rows.append(
                {
                    key: n,
                    "traced_peak_mib": round(r["traced_peak_gib"] * 1024, 2),
                    "estimated_mib": round(r["estimated_peak_gib"] * 1024, 2),
                    "ratio": r["estimate_ratio"],
                    "phase": r["phase"],
                    "by_category_mib": {c: round(v * 1024, 2) for c, v in r["by_category_gib"].items() if v},
                }
            )
            print(method, rows[-1], flush=True)
        results[method] = {
            "date": datetime.date.today().isoformat(),
            "recipe": f"recipes/quickstart/{method}.yaml",
            "points": rows,
        }
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
