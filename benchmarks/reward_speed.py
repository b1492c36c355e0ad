"""Time QueryRewriteReward on a GRPO-sized batch: `python benchmarks/reward_speed.py [--batch 512]`.

The bundled corpus is padded to 400 documents. Completions are drawn (seeded) from the benchmark's reference rewrites,
original queries and reward hacks (`hack_variants`), with groups of repeated completions as GRPO produces. The index
is built before timing (it is built once per run). Writes benchmarks/results/reward_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

from trl_ext.rewards.eval_rewrite import load_rows
from trl_ext.rewards.query_rewrite import BUILTIN_CORPUS, QueryRewriteReward, load_corpus
from trl_ext.rewards.query_rewrite.hacks import hack_variants
from trl_ext.rewards.query_rewrite.text import _surface_words

COLUMNS = ("query", "context", "gold_doc_ids", "required_slots", "answer_terms", "reference_rewrites")


def make_batch(batch: int, corpus_size: int = 400, seed: int = 0):
    """The reward over the bundled corpus padded to `corpus_size` documents (halves of two documents spliced), and a
    batch of `batch` completions with their dataset columns."""
    rng = random.Random(seed)
    rows = load_rows("train")
    docs = load_corpus(BUILTIN_CORPUS)
    texts = [d["text"] for d in docs]
    while len(docs) < corpus_size:
        a, b = rng.sample(texts, 2)
        docs.append({"id": f"pad-{len(docs)}", "text": a[: len(a) // 2] + b[len(b) // 2 :]})
    reward = QueryRewriteReward(corpus=docs)
    corpus = {d["id"]: d for d in load_corpus(docs)}
    picked, completions = [], []
    while len(completions) < batch:
        row = rng.choice(rows)
        probes = hack_variants(row, corpus[row["gold_doc_ids"][0]])
        pool = [row["reference_rewrites"][0], row["query"], *probes.values()]
        for _ in range(8):  # one GRPO group: 8 generations of one prompt
            picked.append(row)
            completions.append([{"role": "assistant", "content": f"<rewrite>{rng.choice(pool)}</rewrite>"}])
    picked, completions = picked[:batch], completions[:batch]
    return reward, completions, {k: [r[k] for r in picked] for k in COLUMNS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus-size", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reward_speed.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    reward, completions, cols = make_batch(args.batch, args.corpus_size)
    build_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        # a fresh instance per repeat would rebuild nothing (the index is shared); clear the query cache to time
        # the cold path of every call
        reward.scorer.index.scores.cache_clear()
        _surface_words.cache_clear()  # and the tokenization memo
        t = time.perf_counter()
        reward(prompts=None, completions=completions, **cols)
        times.append(time.perf_counter() - t)
    result = {
        "batch": args.batch,
        "corpus_docs": len(reward.scorer.index.docs),
        "distinct_completions": len({str(c) for c in completions}),
        "setup_s (index + jieba + data)": round(build_s, 3),
        "seconds_per_batch_median": round(statistics.median(times), 4),
        "seconds_per_batch_max": round(max(times), 4),
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
