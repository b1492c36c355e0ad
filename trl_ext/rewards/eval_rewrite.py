"""`trl-ext eval-rewrite`: retrieval metrics of original queries vs rewrites on a benchmark split, plus hack probes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from trl_ext.rewards.query_rewrite import BUILTIN_CORPUS, QueryRewriteReward, check_format, language

PROBES = ("keyword_stuffing", "gold_copy", "answer_leak", "repeated_tokens", "empty", "overlong", "wrong_language")


def load_rows(split: str, dataset: str = "builtin:query_rewrite") -> list[dict]:
    """Benchmark rows of `split` (a row slice such as `test[:20]` works) of any dataset a recipe can name."""
    from trl_ext.data.loading import load_dataset_by_name, select_split

    return list(select_split(load_dataset_by_name(dataset), split, dataset, "--split"))


def probe_variants(row: dict, gold_text: str) -> dict[str, str]:
    """Reward-hacking variants of a row's reference rewrite; each must score below the reference.

    Args:
        row (`dict`):
            A benchmark row with `query` and `reference_rewrites` (and optionally `answer_terms`).
        gold_text (`str`):
            Text of the row's first gold document, which the copying probes draw from.

    Returns:
        `dict[str, str]`: Probe name (`PROBES`) -> rewrite.
    """
    reference = row["reference_rewrites"][0]
    keywords = " ".join(dict.fromkeys(re.findall(r"[\u4e00-\u9fff]{2,4}|[A-Za-z0-9]{2,}", gold_text)))
    query_is_chinese = language(row["query"]) == "zh"
    return {
        "keyword_stuffing": f"{reference} {keywords[:60]}",
        "gold_copy": gold_text[:80],
        "answer_leak": f"{reference} {' '.join(row.get('answer_terms') or [gold_text[-12:]])}",
        "repeated_tokens": " ".join([reference] * 3),
        "empty": "",
        "overlong": reference + "，" + "请详细介绍相关的全部内容和所有可能的情况以及各种注意事项" * 3,
        "wrong_language": "how to use this feature of the system" if query_is_chinese else "这个系统功能的使用方法",
    }


def probe_pass_rate(reward, rows: list[dict], doc_texts: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Share of hack probes that `reward` scores strictly below the reference rewrite.

    Args:
        reward (`QueryRewriteReward`):
            The reward to probe.
        rows (`list[dict]`):
            Benchmark rows; those without gold documents or reference rewrites are skipped.
        doc_texts (`dict[str, str]`):
            Corpus document id -> text.

    Returns:
        `tuple[float, dict[str, float]]`: The pass rate over all probes, and per probe.
    """
    passed_and_total = {p: [0, 0] for p in PROBES}
    for row in rows:
        if not row.get("gold_doc_ids") or not row.get("reference_rewrites"):
            continue
        variants = probe_variants(row, doc_texts[row["gold_doc_ids"][0]])
        names = ["reference", *variants]
        texts = [row["reference_rewrites"][0], *variants.values()]
        cols = {
            k: [row.get(k)] * len(texts)
            for k in ("query", "context", "gold_doc_ids", "required_slots", "answer_terms", "reference_rewrites")
        }
        scores = dict(zip(names, reward(prompts=None, completions=texts, **cols)))
        for p in PROBES:
            passed_and_total[p][0] += scores[p] < scores["reference"]
            passed_and_total[p][1] += 1
    passed = sum(v[0] for v in passed_and_total.values())
    total = sum(v[1] for v in passed_and_total.values())
    return (passed / total if total else 0.0), {p: v[0] / v[1] for p, v in passed_and_total.items() if v[1]}


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


def evaluate(rows: list[dict], rewrites: list[str], corpus: str) -> dict:
    """Retrieval metrics of the original queries and of the rewrites, format validity and hack-probe pass rates.

    Args:
        rows (`list[dict]`):
            Benchmark rows; those without gold documents are left out of the metrics.
        rewrites (`list[str]`):
            One completion per row; one that fails the format gate retrieves nothing.
        corpus (`str`):
            Corpus path or `builtin:...` to retrieve from.

    Returns:
        `dict`: `rows`, `metrics` (`original` and `rewrite`: `MRR@10`, `Recall@5`, `NDCG@10`), `format_valid`,
        `hack_probe_pass_rate` and `hack_probes` (per probe).
    """
    reward = QueryRewriteReward(corpus=corpus)
    index = reward.scorer.index
    scored = [(r, w) for r, w in zip(rows, rewrites) if r.get("gold_doc_ids")]
    table = {}
    for name in ("original", "rewrite"):
        sums = {"MRR@10": 0.0, "Recall@5": 0.0, "NDCG@10": 0.0}
        for row, rewrite in scored:
            text = row["query"]
            if name == "rewrite":
                text, _ = check_format(rewrite, row["query"])
                text = text or ""
            metrics = index.metrics(text, row["gold_doc_ids"], 5, 10, 10)
            sums["MRR@10"] += metrics["mrr"]
            sums["Recall@5"] += metrics["recall"]
            sums["NDCG@10"] += metrics["ndcg"]
        table[name] = {k: v / max(len(scored), 1) for k, v in sums.items()}
    valid = sum(check_format(w, r["query"])[0] is not None for r, w in scored)
    doc_texts = {d["id"]: d["text"] for d in index.docs}
    rate, per_probe = probe_pass_rate(reward, rows, doc_texts)
    return {
        "rows": len(scored),
        "metrics": table,
        "format_valid": valid / max(len(scored), 1),
        "hack_probe_pass_rate": rate,
        "hack_probes": per_probe,
    }


def eval_rewrite_cli(argv: list[str]) -> int:
    """Run `trl-ext eval-rewrite`; returns the exit code (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="trl-ext eval-rewrite", description=__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--rewrites", help='JSONL of {"id": ..., "rewrite": ...} (or one {"rewrite": ...} per row)')
    src.add_argument("--model", help="model or adapter directory (or builtin:...) that generates the rewrites")
    src.add_argument("--references", action="store_true", help="score the rows' reference rewrites")
    parser.add_argument("--split", default="test", help="benchmark split (default: test)")
    parser.add_argument("--dataset", default="builtin:query_rewrite", help="benchmark folder or JSONL file")
    parser.add_argument("--corpus", default=BUILTIN_CORPUS, help="corpus JSONL (default: the bundled one)")
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
        rows = load_rows(args.split, args.dataset)[: args.limit]
        if args.references:
            rewrites = [(r.get("reference_rewrites") or [r["query"]])[0] for r in rows]
        elif args.rewrites:
            rewrites = read_rewrites(args.rewrites, rows)
        else:
            rewrites = generate_rewrites(args.model, rows, max_new_tokens=args.max_new_tokens)
        result = evaluate(rows, rewrites, args.corpus)
    except (OSError, ValueError, KeyError) as err:  # RecipeError and FileNotFoundError included
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    result["split"] = args.split
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
        return 0
    print(f"split {args.split}: {result['rows']} rows, {result['format_valid']:.1%} rewrites pass the format gate")
    print(f"{'':<10}{'MRR@10':>9}{'Recall@5':>10}{'NDCG@10':>9}")
    for name, m in result["metrics"].items():
        print(f"{name:<10}{m['MRR@10']:>9.3f}{m['Recall@5']:>10.3f}{m['NDCG@10']:>9.3f}")
    print(
        f"hack-probe pass rate: {result['hack_probe_pass_rate']:.1%} "
        f"({', '.join(f'{k} {v:.0%}' for k, v in result['hack_probes'].items())})"
    )
    return 0
