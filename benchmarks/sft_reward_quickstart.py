"""Held-out figures of the SFT and reward-model quickstarts: `python benchmarks/sft_reward_quickstart.py`.

For each seed it runs `recipes/quickstart/sft.yaml` (with and without EWC, `ewc_lambda` 50 on 64 Fisher samples of
`builtin:general_text`) and `recipes/quickstart/reward.yaml` exactly as shipped (same steps, data and LoRA), and
records SFT's held-out loss on `builtin:instructions`' test split before and after training, and the reward model's
held-out pairwise accuracy and margin on `builtin:preferences`' test split (30 pairs; chance is 0.5). Writes
`benchmarks/results/sft_reward_quickstart.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from trl_ext.recipe import load_recipe
from trl_ext.train import build_trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EWC = ["--ewc_lambda", "50", "--ewc_fisher_samples", "64"]


def sft_run(seed: int, out: str, extra: list[str]) -> dict[str, float]:
    """Held-out loss before and after the SFT quickstart."""
    recipe = load_recipe(str(ROOT / "recipes/quickstart/sft.yaml"), ["--output_dir", out, "--seed", str(seed), *extra])
    trainer = build_trainer(recipe)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return {"heldout_loss_before": before, "heldout_loss_after": after}


def reward_run(seed: int, out: str) -> dict[str, float]:
    """Held-out pairwise accuracy and margin after the reward quickstart."""
    recipe = load_recipe(str(ROOT / "recipes/quickstart/reward.yaml"), ["--output_dir", out, "--seed", str(seed)])
    trainer = build_trainer(recipe)
    trainer.train()
    metrics = trainer.evaluate()
    return {"heldout_accuracy": metrics["eval_accuracy"], "heldout_margin": metrics["eval_margin"]}


def write_results(runs: list[dict]) -> None:
    """Write every run (JSON) and the mean, min and max per run kind (Markdown)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.platform(), "runs": runs}
    (RESULTS / "sft_reward_quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# SFT and reward-model quickstarts: held-out figures",
        "",
        "`python benchmarks/sft_reward_quickstart.py` (CPU, 4-bit tiny model, the quickstart recipes as shipped).",
        "",
        "| run | seeds | held-out loss before | held-out loss after | held-out accuracy | held-out margin |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("sft", "sft+ewc", "reward"):
        rows = [r for r in runs if r["run"] == name]
        if not rows:
            continue

        def mean(key, rows=rows):
            values = [r[key] for r in rows if key in r]
            return f"{statistics.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})" if values else "-"

        seeds = ", ".join(str(r["seed"]) for r in rows)
        lines.append(
            f"| {name} | {seeds} | {mean('heldout_loss_before')} | {mean('heldout_loss_after')} | "
            f"{mean('heldout_accuracy')} | {mean('heldout_margin')} |"
        )
    (RESULTS / "sft_reward_quickstart.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    runs: list[dict] = []
    plan = [("reward", seed) for seed in args.seeds] + [
        (run, seed) for seed in args.seeds for run in ("sft", "sft+ewc")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in plan:
            out = f"{tmp}/{name}-{seed}"
            if name == "reward":
                metrics = reward_run(seed, out)
            else:
                metrics = sft_run(seed, out, EWC if name == "sft+ewc" else [])
            runs.append({"run": name, "seed": seed, **metrics})
            print(runs[-1], flush=True)
            write_results(runs)  # after every run, so an interrupted benchmark keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
