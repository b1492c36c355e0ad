"""`trl-ext eval-rewrite`: how well a model's rewrites retrieve on a benchmark split, next to the original queries and
the reference rewrites, and how many of them a hack detector flags."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from trl_ext.rewards.query_rewrite import BUILTIN_CORPUS, QueryRewriteReward, check_format
from trl_ext.rewards.query_rewrite.hacks import flag_hacks

#: Bundled benchmarks -> their corpus (the default of `--corpus`).
BENCHMARK_CORPORA = {
    "builtin:query_rewrite": BUILTIN_CORPUS,
    "builtin:query_rewrite_en": "builtin:query_rewrite_en_corpus/corpus.jsonl",
}


def load_rows(split: str, dataset: str = "builtin:query_rewrite") -> list[dict]:
    """Benchmark rows of `split` (a row slice such as `test[:20]` works) of any dataset a recipe can name."""
    from trl_ext.data.loading import load_dataset_by_name, select_split

    return list(select_split(load_dataset_by_name(dataset), split, dataset, "--split"))


def generate_rewrites(model_path: str, rows: list[dict], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy rewrites from a model or adapter directory, prompted with each row's `prompt` messages."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.assets import resolve_builtin
    from trl_ext.model_source import check_model_source

    path = resolve_builtin(model_path)
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        # the adapter may name its base as `builtin:<name>`, which only trl-ext resolves
        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(check_model_source(base, key=f"the base model of {model_path}"))
        model = PeftModel.from_pretrained(model, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(check_model_source(model_path, key="--model"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def read_rewrites(path: str, rows: list[dict]) -> list[str]:
    """Rewrites from JSONL lines `{"id": ..., "rewrite": ...}` (matched by id) or `{"rewrite": ...}` in row order."""
    with open(path, encoding="utf-8") as fh:
        items = [json.loads(line) for line in fh if line.strip()]
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("rewrite", item.get("completion")), str):
            raise ValueError(f"{path} line {i + 1}: expected an object with a string 'rewrite' (and optionally 'id').")
    if all("id" in item for item in items):
        by_id = {item["id"]: item.get("rewrite", item.get("completion")) for item in items}
        missing = [r["id"] for r in rows if r["id"] not in by_id]
        if missing:
            raise ValueError(
                f"{path} has no rewrite for {len(missing)} row(s) of the split, e.g. {missing[:3]}; "
                "add them or evaluate the split the file was made for (--split)."
            )
        return [by_id[r["id"]] for r in rows]
    if len(items) != len(rows):
        raise ValueError(
            f"{path} has {len(items)} rewrites without ids but the split has {len(rows)} rows; "
            "give one line per row in order, or add an 'id' to each line."
        )
    return [item.get("rewrite", item.get("completion")) for item in items]


def _retrieval_means(index, rows: list[dict], texts: list[str]) -> dict[str, float]:
    sums = {"MRR@10": 0.0, "Recall@5": 0.0, "Recall@10": 0.0, "NDCG@10": 0.0}
    for row, text in zip(rows, texts):
        metrics = index.metrics(text, row["gold_doc_ids"], 5, 10, 10)
        sums["MRR@10"] += metrics["mrr"]
        sums["Recall@5"] += metrics["recall"]
        sums["Recall@10"] += index.metrics(text, row["gold_doc_ids"], 10, 10, 10)["recall"]
        sums["NDCG@10"] += metrics["ndcg"]
    return {k: v / max(len(rows), 1) for k, v in sums.items()}


def _gated(pairs: list[tuple[dict, str]]) -> list[str]:
    """Each rewrite as retrieval sees it: the format gate's output, empty (retrieves nothing) when it fails."""
    return [check_format(w, r["query"], context=r.get("context") or "")[0] or "" for r, w in pairs]


@functools.cache
def _index(corpus: str):
    """The BM25 index of `corpus`, built once per process (reciprocal ranks are asked for run after run)."""
    return QueryRewriteReward(corpus=corpus).scorer.index


def reciprocal_ranks(rows: list[dict], rewrites: list[str], corpus: str) -> list[float]:
    """Per-row reciprocal rank of the first gold document in the top 10 (MRR@10's terms, in `evaluate`'s order):
    the rows without gold documents are left out, a rewrite that fails the format gate scores 0."""
    index = _index(corpus)
    pairs = [(r, w) for r, w in zip(rows, rewrites, strict=True) if r.get("gold_doc_ids")]
    return [index.metrics(text, r["gold_doc_ids"], 5, 10, 10)["mrr"] for (r, _), text in zip(pairs, _gated(pairs))]


def evaluate(rows: list[dict], rewrites: list[str], corpus: str) -> dict:
    """Retrieval metrics of the model's rewrites next to the original queries and the reference rewrites, and the
    share of the model's outputs that the hack detector flags.

    Args:
        rows (`list[dict]`):
            Benchmark rows; those without gold documents are left out.
        rewrites (`list[str]`):
            One completion of the model per row; one that fails the format gate retrieves nothing.
        corpus (`str`):
            Corpus path or `builtin:...` to retrieve from.

    Returns:
        `dict`: `rows`; `metrics` (`original`, `reference` and `model`, each `MRR@10`, `Recall@5`, `Recall@10`,
        `NDCG@10`); `format_valid` (share of rewrites passing the format gate); `hack_flagged` (share of rewrites the
        detector `flag_hacks` flags) and `hack_flags` (share per flag); `reward` (mean composite reward of the
        rewrites).
    """
    reward = QueryRewriteReward(corpus=corpus)
    index = reward.scorer.index
    pairs = [(r, w) for r, w in zip(rows, rewrites) if r.get("gold_doc_ids")]
    scored = [r for r, _ in pairs]
    components = [reward.scorer.score(row, w) for row, w in pairs]
    gated = _gated(pairs)
    references = [(r.get("reference_rewrites") or [r["query"]])[0] for r in scored]
    table = {
        "original": _retrieval_means(index, scored, [r["query"] for r in scored]),
        "reference": _retrieval_means(index, scored, references),
        "model": _retrieval_means(index, scored, gated),
    }
    flags = [flag_hacks(c, w, r) for c, w, r in zip(components, gated, scored)]
    counts: dict[str, int] = {}
    for row_flags in flags:
        for flag in row_flags:
            counts[flag] = counts.get(flag, 0) + 1
    n = max(len(scored), 1)
    rewards = [reward.reward_from_components(c) for c in components]
    return {
        "rows": len(scored),
        "metrics": table,
        "format_valid": sum(c["format"] for c in components) / n,
        "hack_flagged": sum(bool(f) for f in flags) / n,
        "hack_flags": {k: v / n for k, v in sorted(counts.items())},
        "reward": sum(r for r in rewards if r is not None) / n,
    }


def eval_rewrite_cli(argv: list[str]) -> int:
    """Run `trl-ext eval-rewrite`; returns the exit code (2 on bad input)."""
    import datasets

    datasets.disable_progress_bars()  # a report on stdout and one error line on stderr, nothing else
    parser = argparse.ArgumentParser(prog="trl-ext eval-rewrite", description=__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--rewrites", help='JSONL of {"id": ..., "rewrite": ...} (or one {"rewrite": ...} per row)')
    src.add_argument("--model", help="model or adapter directory (or builtin:...) that generates the rewrites")
    src.add_argument("--references", action="store_true", help="use the rows' reference rewrites as the outputs")
    parser.add_argument("--split", default="test", help="benchmark split (default: test)")
    parser.add_argument(
        "--dataset",
        default="builtin:query_rewrite",
        help="benchmark folder or JSONL file (default: builtin:query_rewrite; builtin:query_rewrite_en is English)",
    )
    parser.add_argument(
        "--corpus", default=None, help="corpus JSONL, {id, text} or BEIR {_id, title, text} (default: the benchmark's)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows")
    parser.add_argument(
        "--max-new-tokens",
        "--max_new_tokens",
        dest="max_new_tokens",
        type=int,
        default=64,
        help="generation length with --model (default: 64)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        corpus = args.corpus or BENCHMARK_CORPORA.get(args.dataset)
        if corpus is None:
            raise ValueError(f"--dataset {args.dataset} is not a bundled benchmark; pass its corpus with --corpus.")
        rows = load_rows(args.split, args.dataset)[: args.limit]
        if args.references:
            rewrites = [(r.get("reference_rewrites") or [r["query"]])[0] for r in rows]
        elif args.rewrites:
            rewrites = read_rewrites(args.rewrites, rows)
        else:
            rewrites = generate_rewrites(args.model, rows, max_new_tokens=args.max_new_tokens)
        result = evaluate(rows, rewrites, corpus)
    except (OSError, ValueError, KeyError) as err:  # RecipeError and FileNotFoundError included
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    result["split"] = args.split
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
        return 0
    print(
        f"split {args.split}: {result['rows']} rows, {result['format_valid']:.1%} of the outputs pass the format gate"
    )
    print(f"{'':<10}{'MRR@10':>9}{'Recall@5':>10}{'Recall@10':>11}{'NDCG@10':>9}")
    for name, m in result["metrics"].items():
        print(f"{name:<10}{m['MRR@10']:>9.3f}{m['Recall@5']:>10.3f}{m['Recall@10']:>11.3f}{m['NDCG@10']:>9.3f}")
    flags = ", ".join(f"{k} {v:.0%}" for k, v in result["hack_flags"].items()) or "none"
    print(f"outputs flagged as hacks: {result['hack_flagged']:.1%} ({flags})")
    print(f"mean composite reward of the outputs: {result['reward']:.3f}")
    return 0
