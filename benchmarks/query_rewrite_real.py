"""Query rewriting on a real model: SmolLM2-135M-Instruct on the English benchmark, held out.

Stages (each result written to ``benchmarks/results/real_model.json`` under ``query_rewrite`` as soon as it exists;
a rerun skips the trained stages whose adapter is already in ``--work``):

1. raw queries and reference rewrites (no model), and the model as is (zero-shot, prompted with each row's chat
   prompt), scored by ``trl_ext.rewards.eval_rewrite.evaluate`` on the test split of ``builtin:query_rewrite_en``
   (BM25 over ``builtin:query_rewrite_en_corpus``): MRR@10, Recall@5, NDCG@10, format-valid share, hack-flag share;
2. SFT on the reference rewrites (``recipes/quickstart/sft-query-rewrite.yaml`` with the model, the English
   benchmark and a LoRA on the unquantized base), then the same evaluation;
3. GRPO from the SFT adapter (``recipes/quickstart/grpo-query-rewrite.yaml`` with ``--sft_adapter_path``) with the
   composite ``QueryRewriteReward`` on the English corpus, then the same evaluation;
4. with ``--grpo-alone --grpo-lr LR``: the same GRPO run from the model as is (no SFT), for the comparison of
   SFT -> GRPO with GRPO alone and SFT alone.

    python benchmarks/query_rewrite_real.py                    # ~45 min on the shared 2-core CPU
    python benchmarks/query_rewrite_real.py --table-only

Budget (measured 2026-12-02 on 2 CPU cores shared with 3 other engineers' jobs, load average 6-10, one torch
thread): a GRPO step with 4 generations of 24 tokens takes ~40-50 s, an SFT step of 4 rows ~25 s, greedy rewrites
of the 72 test rows ~5 min per model. The runs use a LoRA (r=8, the quickstart's) on the unquantized base (a 4-bit
base gains nothing on a CPU: ``benchmarks/real_model_step_time.py``), and small budgets: SFT 40 steps of 4 rows, GRPO
24 steps of one prompt x 4 generations (24-token completions), greedy 32-token rewrites for the evaluation; one seed
(42). Recall is the evaluator's Recall@5. About 50 min in all at that load.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "quickstart"
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "builtin:smollm2-135m-instruct"
DATASET = "builtin:query_rewrite_en"
CORPUS = "builtin:query_rewrite_en_corpus/corpus.jsonl"
WEIGHTS = {
    "rank": 1.0,
    "ndcg": 0.5,
    "recall": 0.25,
    "mrr": 0.25,
    "gain": 0.5,
    "slots": 0.5,
    "faithfulness": 0.25,
    "reference_f1": 0.1,
    "length": 0.5,
    "leakage": 1.0,
    "hallucination": 0.5,
}  # the quickstart's weights


def train(recipe: str, out: Path, *extra: str, seed: int = 42) -> float:
    """Run `trl-ext train` on a quickstart recipe with the real model, the English benchmark and no 4-bit."""
    cmd = [sys.executable, "-m", "trl_ext.cli", "train", str(QUICKSTART / recipe), "--output_dir", str(out)]
    cmd += ["--model_name_or_path", MODEL, "--dataset_name", DATASET, "--load_in_4bit", "false"]
    cmd += ["--use_bnb_nested_quant", "false", "--seed", str(seed), "--save_strategy", "no", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def record(out: Path, key: str, value) -> None:
    """Write `query_rewrite.<key>` into the results JSON now (locked: other benchmarks write the same file)."""
    with open(Path(tempfile.gettempdir()) / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(out.read_text()) if out.is_file() else {}
        summary.setdefault("query_rewrite", {})[key] = value
        out.write_text(json.dumps(summary, indent=2) + "\n")
        write_table(summary["query_rewrite"], RESULTS / "real_model_query_rewrite.md")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/query_rewrite_real"))
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--grpo-steps", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--grpo-lr",
        type=float,
        default=None,
        help="GRPO learning rate (default: the quickstart's 2e-3); with it set, "
        "the run is `sft_grpo_lr<lr>` in --work and in the results, and the zero-shot and SFT stages are reused",
    )
    parser.add_argument(
        "--grpo-alone",
        action="store_true",
        help="with --grpo-lr: GRPO from the model as is (no SFT adapter), the run `grpo_lr<lr>`",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="training seed (LoRA init, data order, sampling); another seed than 42 keeps its runs in --work/seed<N> "
        "and its results under keys ending in _seed<N>",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "real_model.json")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if args.table_only:
        write_table(json.loads(args.out.read_text())["query_rewrite"], RESULTS / "real_model_query_rewrite.md")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from trl_ext.rewards.eval_rewrite import evaluate, generate_rewrites, load_rows

    torch.set_num_threads(args.threads)
    rows = load_rows("test", DATASET)

    def held_out(model: str, name: str) -> None:
        t0 = time.perf_counter()
        rewrites = generate_rewrites(model, rows, max_new_tokens=args.max_new_tokens)
        r = evaluate(rows, rewrites, CORPUS)
        m = r["metrics"]
        record(
            args.out,
            ("setup" if args.grpo_lr is None else f"setup_{name}") + suffix,
            {
                "model": MODEL,
                "dataset": DATASET,
                "split": "test",
                "rows": r["rows"],
                "corpus": CORPUS,
                "sft_steps": args.sft_steps,
                "grpo_steps": args.grpo_steps,
                "max_new_tokens": args.max_new_tokens,
                "seed": args.seed,
                "command": "python benchmarks/query_rewrite_real.py " + " ".join(argv or sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
                "machine": "2 CPU cores shared with other jobs; 1 torch thread",
            },
        )
        record(args.out, "mrr_raw", m["original"]["MRR@10"])
        record(args.out, "recall5_raw", m["original"]["Recall@5"])
        record(args.out, "mrr_reference", m["reference"]["MRR@10"])
        record(args.out, "recall5_reference", m["reference"]["Recall@5"])
        record(args.out, f"mrr_{name}{suffix}", m["model"]["MRR@10"])
        record(
            args.out,
            name + suffix,
            {
                "metrics": m["model"],
                "format_valid": r["format_valid"],
                "hack_flagged": r["hack_flagged"],
                "hack_flags": r["hack_flags"],
                "reward": r["reward"],
                "eval_seconds": time.perf_counter() - t0,
                "rewrites": rewrites,
            },
        )
        print(name, json.dumps(m["model"]), "format", r["format_valid"], "flagged", r["hack_flagged"], flush=True)

    suffix = "" if args.seed == 42 else f"_seed{args.seed}"
    if suffix:
        args.work = args.work / f"seed{args.seed}"
    if args.grpo_alone and args.grpo_lr is None:
        parser.error("--grpo-alone needs --grpo-lr (the learning rate the SFT -> GRPO run it is compared with used)")
    name = "sft_grpo" if args.grpo_lr is None else f"sft_grpo_lr{args.grpo_lr:g}"
    if args.grpo_alone:
        name = f"grpo_lr{args.grpo_lr:g}"
    sft, grpo = args.work / "sft", args.work / name.replace("_", "-")
    if args.grpo_lr is None and not suffix:
        held_out(MODEL, "zero_shot")
    if not args.grpo_alone and not (sft / "adapter_config.json").is_file():
        sft_extra = ["--max_steps", str(args.sft_steps), "--per_device_train_batch_size", "4", "--logging_steps", "5"]
        record(args.out, f"sft_train_seconds{suffix}", train("sft-query-rewrite.yaml", sft, *sft_extra, seed=args.seed))
    if args.grpo_lr is None or (suffix and not args.grpo_alone and f"sft{suffix}" not in _recorded(args.out)):
        held_out(str(sft), "sft")
    if not (grpo / "adapter_config.json").is_file():
        kwargs = json.dumps({"QueryRewriteReward": {"corpus": CORPUS, "weights": WEIGHTS}})
        grpo_extra = [] if args.grpo_alone else ["--sft_adapter_path", str(sft)]
        grpo_extra += ["--dataset_train_split", "train", "--max_steps"]
        grpo_extra += [str(args.grpo_steps), "--per_device_train_batch_size", "4", "--num_generations", "4"]
        grpo_extra += ["--max_completion_length", "24", "--reward_kwargs", kwargs]
        if args.grpo_lr is not None:
            grpo_extra += ["--learning_rate", str(args.grpo_lr)]
        seconds = train("grpo-query-rewrite.yaml", grpo, *grpo_extra, seed=args.seed)
        record(args.out, f"{name}_train_seconds{suffix}", seconds)
    held_out(str(grpo), name)
    return 0


def _recorded(out: Path) -> dict:
    return json.loads(out.read_text()).get("query_rewrite", {}) if out.is_file() else {}


#: The runs compared over seeds: result key (seed 42's; other seeds add `_seed<N>`) -> label.
SEED_RUNS = {"sft": "SFT", "grpo_lr0.0001": "GRPO alone, lr 1e-4", "sft_grpo_lr0.0001": "SFT -> GRPO, lr 1e-4"}


def seed_run(qr: dict, key: str, seed: int) -> dict | None:
    """A run's stored results: seed 42's under `key`, another seed's under `key_seed<N>`."""
    r = qr.get(key if seed == 42 else f"{key}_seed{seed}")
    return r if isinstance(r, dict) else None


def seed_table(qr: dict) -> list[str]:
    """Held-out MRR@10 of each run per seed, mean +- sample std, and SFT -> GRPO minus SFT paired by seed."""
    import statistics

    seeds = [42] + sorted({int(k.rsplit("_seed", 1)[1]) for k in qr if "_seed" in k and k.split("_seed")[1].isdigit()})
    if len(seeds) < 2:
        return []

    def mrr(key: str, seed: int):
        r = seed_run(qr, key, seed)
        return r["metrics"]["MRR@10"] if r else None

    lines = ["", "MRR@10 over seeds (same steps and data for every run; seed = LoRA init, data order, sampling):", ""]
    lines += ["| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std |"]
    lines += ["|---|" + "---|" * (len(seeds) + 1)]
    table = {key: [mrr(key, s) for s in seeds] for key in SEED_RUNS}
    for key, label in SEED_RUNS.items():
        got = [v for v in table[key] if v is not None]
        spread = f"{statistics.mean(got):.3f} +- {statistics.stdev(got):.3f}" if len(got) > 1 else ""
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in table[key])
        lines.append(f"| {label} | {cells} | {spread} |")
    pairs = zip(table["sft_grpo_lr0.0001"], table["sft"])
    diffs = [after - before for after, before in pairs if after is not None and before is not None]
    if diffs:
        lines += [
            "",
            f"SFT -> GRPO minus SFT, paired by seed: {', '.join(f'{d:+.3f}' for d in diffs)} (mean "
            f"{statistics.mean(diffs):+.3f}; exact sign-flip test over the seeds, one-sided p = "
            f"{sign_flip_p(diffs):.3f}).",
        ]
    lines += paired_query_bootstrap(qr, seeds)
    return lines


def sign_flip_p(diffs: list[float]) -> float:
    """One-sided p-value of the mean paired difference: the share of the 2^n sign assignments whose mean is at least
    the observed one (exact; the seeds are the unit, so this is the test a new seed would be drawn under)."""
    import itertools

    observed = sum(diffs)
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    return sum(sum(s * d for s, d in zip(signs, diffs)) >= observed - 1e-12 for signs in flips) / len(flips)


def paired_query_bootstrap(qr: dict, seeds: list[int], resamples: int = 10000) -> list[str]:
    """SFT -> GRPO minus SFT per test query, averaged over the seeds whose results keep both runs' rewrites (seed 42's
    first runs did not store them), with a 95 % bootstrap interval over the test queries (the same resampled queries
    for every seed; the seeds' runs fixed)."""
    import random

    from trl_ext.rewards.eval_rewrite import load_rows, reciprocal_ranks

    def rewrites(key: str, seed: int):
        r = seed_run(qr, key, seed)
        return r.get("rewrites") if r else None

    both = [s for s in seeds if rewrites("sft", s) and rewrites("sft_grpo_lr0.0001", s)]
    if len(both) < 2:
        return []
    rows = load_rows("test", DATASET)

    def ranks(key: str, seed: int) -> list[float]:
        rr = reciprocal_ranks(rows, rewrites(key, seed), CORPUS)
        stored = seed_run(qr, key, seed)["metrics"]["MRR@10"]
        if abs(sum(rr) / len(rr) - stored) > 1e-9:  # the stored rewrites must be the ones that were scored
            raise ValueError(f"{key} seed {seed}: per-query ranks average {sum(rr) / len(rr)}, stored MRR {stored}")
        return rr

    per_seed = [[after - before for after, before in zip(ranks("sft_grpo_lr0.0001", s), ranks("sft", s))] for s in both]
    n = len(per_seed[0])
    per_query = [sum(d[i] for d in per_seed) / len(both) for i in range(n)]
    rng = random.Random(0)
    means = sorted(sum(per_query[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    better = sum(d > 0 for d in per_query)
    worse = sum(d < 0 for d in per_query)
    return [
        "",
        f"SFT -> GRPO minus SFT per test query (reciprocal rank), averaged over seeds {', '.join(map(str, both))}: "
        f"mean {sum(per_query) / n:+.3f}, 95 % bootstrap interval over the {n} queries [{low:+.3f}, {high:+.3f}]; "
        f"{better} queries better, {worse} worse, {n - better - worse} tied.",
    ]


def write_table(qr: dict, path: Path) -> None:
    setup = qr.get("setup", {})
    lines = [
        f"# Query rewriting on {setup.get('model')}: {setup.get('dataset')} test split ({setup.get('rows')} rows)",
        "",
        f"Command: `{setup.get('command', '').strip()}`; {setup.get('date')}; {setup.get('machine')}. SFT "
        f"{setup.get('sft_steps')} steps x 4 rows, GRPO {setup.get('grpo_steps')} steps x 1 prompt x 4 generations "
        "(composite QueryRewriteReward, English corpus), LoRA on the unquantized base, seed 42.",
        "",
        "| rewrites | MRR@10 | Recall@5 | NDCG@10 | format valid | hack-flagged |",
        "|---|---|---|---|---|---|",
        f"| raw queries | {qr.get('mrr_raw', 0):.3f} | {qr.get('recall5_raw', 0):.3f} | | | |",
        f"| reference rewrites | {qr.get('mrr_reference', 0):.3f} | {qr.get('recall5_reference', 0):.3f} | | | |",
    ]
    labels = [("zero_shot", "model as is (zero-shot)"), ("sft", "after SFT"), ("sft_grpo", "SFT -> GRPO, lr 2e-3")]
    labels += [
        (k, f"SFT -> GRPO, lr {k[len('sft_grpo_lr') :]}")
        for k, v in qr.items()
        if k.startswith("sft_grpo_lr") and "_seed" not in k and isinstance(v, dict)
    ]
    labels += [
        (k, f"GRPO alone (from the model as is), lr {k[len('grpo_lr') :]}")
        for k, v in qr.items()
        if k.startswith("grpo_lr") and "_seed" not in k and isinstance(v, dict)
    ]
    for name, label in labels:
        if name in qr:
            r = qr[name]
            m = r["metrics"]
            lines.append(
                f"| {label} | {m['MRR@10']:.3f} | {m['Recall@5']:.3f} | {m['NDCG@10']:.3f} | "
                f"{r['format_valid']:.0%} | {r['hack_flagged']:.0%} |"
            )
    lines += seed_table(qr)
    reruns = list(dict.fromkeys(v["command"].strip() for k, v in qr.items() if k.startswith("setup_")))
    if reruns:
        runs = ", ".join(f"`{c}`" for c in reruns)
        lines += ["", f"Reruns (another GRPO learning rate, GRPO alone, other seeds): {runs}."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
