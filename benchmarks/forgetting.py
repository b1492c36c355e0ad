"""Forgetting benchmark: does EWC keep what the model knew while DPO pulls it away?

The bundled tiny model was pre-trained on general text A (``builtin:general_text``). DPO then trains it on
``builtin:counterfacts``: preference pairs that prefer *wrong* versions of A's facts (arithmetic, rivers, roads), so
learning the task necessarily moves the model away from A. Runs, all LoRA (r=16, all-linear) with the same seed:

- no regularizer;
- uniform L2 in the same full weight space (F = 1): ``lambda/2 * ||s B A||^2``, a lambda sweep;
- EWC (true Fisher of the base weights, 256 sequences of A's train split), a lambda sweep.

Measured: held-out NLL on A (``general_text`` test split; forgetting = increase over the model before DPO), DPO
reward accuracy on held-out counterfact pairs (task), seconds per optimizer step (ratio to no regularizer), and the
Fisher pass time. Writes ``benchmarks/results/forgetting.{json,md,png}``.

    python benchmarks/forgetting.py                # full sweep (~10 min on 2 CPU cores)
    python benchmarks/forgetting.py --build-data   # rewrite trl_ext/data/counterfacts (trl_ext.data.build_counterfacts)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from trl_ext.assets import DATA_DIR
from trl_ext.data import build_counterfacts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------

BASE = [
    "--method",
    "dpo",
    "--model_name_or_path",
    "builtin:tiny-chat",
    "--dataset_name",
    "builtin:counterfacts",
    "--use_peft",
    "true",
    "--lora_r",
    "16",
    "--lora_alpha",
    "32",
    "--lora_dropout",
    "0.0",
    "--lora_target_modules",
    "all-linear",
    "--beta",
    "0.1",
    "--lr_scheduler_type",
    "constant",
    "--per_device_train_batch_size",
    "8",
    "--max_length",
    "128",
    "--gradient_checkpointing",
    "false",
    "--logging_steps",
    "10",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--seed",
    "42",
    "--eval_strategy",
    "steps",
    "--eval_steps",
    "100000",  # held-out pairs prepared by the trainer, scored at the end
]


class StepTimer:
    """Median wall time of an optimizer step (first two steps skipped as warm-up); forgetting/eval time excluded."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times, self.t0 = [], None

            def on_step_begin(self, args, state, control, **kwargs):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append(time.perf_counter() - self.t0)

            def median(self):
                import statistics

                return statistics.median(self.times[2:] or self.times)

        return _Timer()


def run_one(label: str, extra: list[str], steps: int, lr: float, anchor, out_root: Path) -> dict:
    import torch

    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    recipe = load_recipe(
        None,
        BASE + ["--max_steps", str(steps), "--learning_rate", str(lr), "--output_dir", str(out_root / label)] + extra,
    )
    torch.manual_seed(42)
    timer = StepTimer()
    trainer = build_trainer(recipe, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    nll = anchor.evaluate(trainer.model)["forgetting/anchor_nll"]
    # task: DPO reward accuracy on held-out pairs (implicit reward of chosen > rejected)
    metrics = trainer.evaluate()
    logs = [h for h in trainer.state.log_history if "ewc/penalty" in h]
    return {
        "label": label,
        "anchor_nll": nll,
        "reward_accuracy": metrics["eval_rewards/accuracies"],
        "reward_margin": metrics["eval_rewards/margins"],
        "train_seconds": seconds,
        "step_seconds": timer.median(),
        "final_penalty": logs[-1]["ewc/penalty"] if logs else 0.0,
        "final_predicted_kl": logs[-1]["ewc/predicted_kl"] if logs else 0.0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-data", action="store_true")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fisher-samples", type=int, default=256)
    parser.add_argument("--ewc-lambdas", type=float, nargs="+", default=[30.0, 100.0, 300.0, 1000.0, 3000.0])
    parser.add_argument("--l2-lambdas", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--out", default=str(RESULTS / "forgetting"))
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="add the isolated penalty timing to an existing results JSON and rewrite the table",
    )
    args = parser.parse_args(argv)
    if args.overhead_only:
        out = Path(args.out)
        summary = json.loads(out.with_suffix(".json").read_text())
        summary.update(penalty_overhead(Path("/tmp/trl-ext-forgetting-bench/fisher.safetensors")))
        summary["penalty_overhead_vs_none_step"] = summary["penalty_seconds"] / summary["runs"][0]["step_seconds"]
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
        write_table(summary, out.with_suffix(".md"))
        print(out.with_suffix(".md").read_text())
        return 0
    if args.build_data or not (DATA_DIR / "counterfacts" / "train.jsonl").is_file():
        build_counterfacts.main([])
        if args.build_data:
            return 0

    import torch
    from peft import get_peft_model

    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.ewc import estimate_fisher, load_token_samples, model_identity, save_fisher
    from trl_ext.ewc.fisher import FisherEstimate
    from trl_ext.modeling import load_model_and_tokenizer
    from trl_ext.recipe import load_recipe

    out_root = Path("/tmp/trl-ext-forgetting-bench")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    recipe = load_recipe(None, BASE + ["--output_dir", str(out_root / "fisher")])
    model, tokenizer, peft_config = load_model_and_tokenizer(recipe.model, recipe.training)
    model = get_peft_model(model, peft_config)
    anchor = ForgettingMonitorCallback("builtin:general_text", split="test", num_samples=54, max_length=128)
    anchor._load(tokenizer)
    base_nll = anchor.evaluate(model)["forgetting/anchor_nll"]
    samples = load_token_samples("builtin:general_text", tokenizer, args.fisher_samples, 128, split="train", seed=0)
    fisher = estimate_fisher(
        model, samples, mode="full", fisher_type="true", batch_size=8, seed=0, pad_token_id=tokenizer.pad_token_id
    )
    fisher_path, ones_path = out_root / "fisher.safetensors", out_root / "ones.safetensors"
    save_fisher(fisher_path, fisher, model_identity(model))
    ones = FisherEstimate({k: torch.ones_like(v) for k, v in fisher.tensors.items()}, "full", "uniform", 0, 0)
    save_fisher(ones_path, ones, model_identity(model))
    print(
        f"base NLL on A {base_nll:.4f}; Fisher pass {fisher.seconds:.1f}s, agreement {fisher.split_half_agreement:.3f}"
    )

    runs = [("none", [])]
    runs += [
        (f"l2 {lam:g}", ["--ewc_lambda", str(lam), "--ewc_fisher_path", str(ones_path)]) for lam in args.l2_lambdas
    ]
    runs += [
        (f"ewc {lam:g}", ["--ewc_lambda", str(lam), "--ewc_fisher_path", str(fisher_path)]) for lam in args.ewc_lambdas
    ]
    results = []
    for label, extra in runs:
        r = run_one(label.replace(" ", "-"), extra, args.steps, args.lr, anchor, out_root)
        r["label"] = label
        results.append(r)
        print(json.dumps(r), flush=True)

    ref = results[0]
    for r in results:
        r["nll_increase"] = r["anchor_nll"] - base_nll
        r["nll_increase_vs_none"] = r["nll_increase"] / ref["nll_increase"] if ref["nll_increase"] > 0 else None
        r["accuracy_vs_none"] = r["reward_accuracy"] / ref["reward_accuracy"] if ref["reward_accuracy"] else None
        r["step_time_ratio"] = r["step_seconds"] / ref["step_seconds"]
    summary = {
        "base_anchor_nll": base_nll,
        "fisher_seconds": fisher.seconds,
        "fisher_samples": fisher.n_samples,
        "fisher_tokens": fisher.n_tokens,
        "fisher_split_half_agreement": fisher.split_half_agreement,
        "steps": args.steps,
        "learning_rate": args.lr,
        "runs": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    write_table(summary, out.with_suffix(".md"))
    plot(summary, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


def penalty_overhead(fisher_path: Path, repeats: int = 50) -> dict:
    """Seconds per EWC penalty value+gradient (full mode, all-linear LoRA r=16 on the tiny model), the only work
    EWC adds to an optimizer step; measured in isolation because step times on a shared CPU are noisy."""
    import torch
    from peft import get_peft_model

    from trl_ext.ewc import EWCPenalty, adapted_modules, load_fisher
    from trl_ext.modeling import load_model_and_tokenizer
    from trl_ext.recipe import load_recipe

    recipe = load_recipe(None, BASE + ["--output_dir", "/tmp/trl-ext-forgetting-bench/overhead"])
    model, _, peft_config = load_model_and_tokenizer(recipe.model, recipe.training)
    model = get_peft_model(model, peft_config)
    modules = adapted_modules(model)
    for m in modules:
        torch.nn.init.normal_(m.lora_B, std=0.01)
    penalty = EWCPenalty(modules, load_fisher(fisher_path, model, modules).tensors, 100.0)
    penalty.value_and_grads()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        penalty.value_and_grads()
        times.append(time.perf_counter() - t0)
    import statistics

    return {"penalty_seconds": statistics.median(times)}


def write_table(summary: dict, path: Path) -> None:
    lines = [
        f"Base model NLL on held-out A: {summary['base_anchor_nll']:.4f}. "
        f"Fisher pass: {summary['fisher_seconds']:.1f}s "
        f"({summary['fisher_samples']} sequences, {summary['fisher_tokens']} tokens, split-half agreement "
        f"{summary['fisher_split_half_agreement']:.3f}). "
        f"DPO: {summary['steps']} steps, lr {summary['learning_rate']:g}.",
        "",
        "| run | NLL on A (held out) | NLL increase | increase vs none | reward acc. (held out) | acc. vs none "
        "| s/step | step-time ratio | final penalty |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        inc = "" if r["nll_increase_vs_none"] is None else f"{r['nll_increase_vs_none']:.2f}"
        acc = "" if r["accuracy_vs_none"] is None else f"{r['accuracy_vs_none']:.2f}"
        lines.append(
            f"| {r['label']} | {r['anchor_nll']:.4f} | {r['nll_increase']:+.4f} | {inc} | "
            f"{r['reward_accuracy']:.3f} | {acc} | {r['step_seconds']:.2f} | {r['step_time_ratio']:.2f} | "
            f"{r['final_penalty']:.4f} |"
        )
    if "penalty_seconds" in summary:
        lines += [
            "",
            f"EWC penalty value+gradient in isolation (full mode): {1000 * summary['penalty_seconds']:.2f} ms "
            f"per optimizer step = {100 * summary['penalty_overhead_vs_none_step']:.1f} % of the median "
            "unregularized step. The s/step column is wall time on a 2-core CPU shared with other jobs "
            "and is noisy; the isolated number is the overhead EWC adds.",
        ]
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install trl-ext[bench]); no plot written", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for kind, marker in (("ewc", "o-"), ("l2", "s--")):
        rs = [r for r in summary["runs"] if r["label"].startswith(kind)]
        ax.plot(
            [r["nll_increase"] for r in rs],
            [r["reward_accuracy"] for r in rs],
            marker,
            label="EWC (true Fisher)" if kind == "ewc" else "uniform L2 (F = 1)",
        )
        for r in rs:
            ax.annotate(r["label"].split()[1], (r["nll_increase"], r["reward_accuracy"]), fontsize=7)
    none = summary["runs"][0]
    ax.plot([none["nll_increase"]], [none["reward_accuracy"]], "k*", markersize=12, label="no regularizer")
    ax.set_xlabel("forgetting: NLL increase on held-out A (nats/token)")
    ax.set_ylabel("task: DPO reward accuracy on held-out pairs")
    ax.set_title("Forgetting vs task (tiny model, LoRA DPO)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
