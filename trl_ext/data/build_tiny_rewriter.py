"""Build the bundled ``builtin:tiny-rewriter`` model: ``python -m trl_ext.data.build_tiny_rewriter``.

A starting point for GRPO on the bundled query-rewrite benchmark (``builtin:query_rewrite``): the same family as
``builtin:tiny-chat`` (2-layer Qwen2, ChatML template, tied embeddings) with a byte-level BPE tokenizer whose merges are
learned from the Chinese help-document corpus and the **train** split's prompts and rewrites, so Chinese text takes few
tokens and every string round-trips exactly. It is then trained briefly, seeded, on the train split only: each prompt
followed by its reference rewrite in the ``<rewrite>...</rewrite>`` format, plus the corpus documents as plain text.
The test split is never read.

Training is deliberately short: sampled completions are mostly format-valid, but at temperature 1 they often name the
wrong feature, drop the system or add stray words, so retrieval rewards vary within a group and GRPO has something to
improve.

Run: ``python -m trl_ext.data.build_tiny_rewriter`` (a few minutes on two CPU cores); ``--steps`` sets the training
length, ``--out`` another output folder.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from trl_ext.assets import DATA_DIR
from trl_ext.data.build_assets import build_tokenizer, pretrain, render_chatml, save_model, tiny_qwen2

SEED = 4321
VOCAB_SIZE = 3072
STEPS = 500


def load_split(split: str) -> list[dict]:
    with open(DATA_DIR / "query_rewrite" / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def training_texts() -> tuple[list[str], list[str]]:
    """(SFT conversations from the train split, corpus documents)."""
    rows = load_split("train")
    with open(DATA_DIR / "query_rewrite_corpus" / "corpus.jsonl", encoding="utf-8") as fh:
        corpus = [json.loads(line)["text"] for line in fh]
    sft = [
        render_chatml(
            row["prompt"] + [{"role": "assistant", "content": f"<rewrite>{row['reference_rewrites'][0]}</rewrite>"}]
        )
        for row in rows
    ]
    return sft, corpus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DATA_DIR / "tiny-rewriter")
    args = parser.parse_args(argv)

    sft, corpus = training_texts()
    tokenizer = build_tokenizer(sft + corpus, vocab_size=VOCAB_SIZE)
    for text in sft[:5] + corpus[:5]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text, "tokenizer must round-trip exactly"
    lengths = [len(tokenizer(t)["input_ids"]) for t in sft]
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    model = tiny_qwen2(tokenizer, seed=args.seed)
    # conversations twice as often as documents: the documents teach the names, the conversations the task
    texts = sft * 2 + corpus
    random.Random(args.seed).shuffle(texts)
    losses = pretrain(model, tokenizer, texts, steps=args.steps, seed=args.seed, max_length=max(lengths) + 8)
    print(
        f"tokens per conversation: max {max(lengths)}, mean {sum(lengths) / len(lengths):.0f}; "
        f"training loss: first {losses[0]:.3f}, last {sum(losses[-10:]) / 10:.3f}"
    )
    save_model(model, tokenizer, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
