"""Build the bundled ``builtin:tiny-rewriter`` model: ``python -m trl_ext.data.build_tiny_rewriter``.

A starting point for GRPO on the bundled query-rewrite benchmark (``builtin:query_rewrite``): the same family as
``builtin:tiny-chat`` (2-layer Qwen2, ChatML template, tied embeddings) with a byte-level BPE tokenizer whose merges are
learned from the Chinese help-document corpus and the **train** split's prompts and rewrites, so Chinese text takes few
tokens and every string round-trips exactly. It is then trained briefly, seeded, on the train split only: each prompt
followed by its reference rewrite in the ``<rewrite>...</rewrite>`` format, plus the corpus documents as plain text
(phase 1, ``--steps``; the shipped model is this phase alone). The test split is never read.

Test rows name features no train row names, and the phase-1 model rewrites them with train names (held out it is worse
than the raw queries). An optional phase 2 (``--copy-steps N``, off by default) trains on *renamed copies* of the train
rows: every system, feature and metric name the prompt states is replaced, consistently in the prompt and the
reference, by a random one (random corpus CJK characters, keeping a Latin suffix such as ``CRM``; random corpus words
for English), so the only way to get the reference right is to copy the name from the input. Rows whose reference
needs a name the prompt does not state (an ambiguous "the report thing") are not renamed. Measured: 600 phase-2 steps
(batch 16, lr 2e-3, from the shipped weights via ``--init``) did not teach copying (held-out MRR@10 0.056 vs 0.066
before; the phase-2 loss stayed at 0.66, the random names unpredicted), so the shipped model does not use it; a 2-layer
model probably needs thousands of steps to form copy (induction) heads.

Run: ``python -m trl_ext.data.build_tiny_rewriter`` (a few minutes on two CPU cores); ``--steps`` sets phase 1's
length, ``--copy-steps`` phase 2's, ``--init DIR`` starts phase 2 from a built model instead of running phase 1,
``--out`` another output folder.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from trl_ext.assets import DATA_DIR
from trl_ext.data.build_assets import build_tokenizer, pretrain, render_chatml, save_model, tiny_qwen2

SEED = 4321
VOCAB_SIZE = 3072
STEPS = 500  # phase 1: the train conversations as they are
COPY_STEPS = 0  # phase 2 (renamed copies): off, see above
COPY_LR = 2e-3
COPY_BATCH = 16
RENAMED_COPIES = 4  # renamed copies of each train row whose names the prompt states
DATASETS = {"query_rewrite": "query_rewrite_corpus"}
NAME_SLOTS = ("系统", "功能", "指标", "product", "feature", "metric")


def load_split(dataset: str, split: str) -> list[dict]:
    with open(DATA_DIR / dataset / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def load_corpus(name: str) -> list[str]:
    with open(DATA_DIR / name / "corpus.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def _names(row: dict) -> list[str]:
    """The full names (first accepted value) of the row's system/product, feature and metric slots."""
    return [row["required_slots"][slot][0] for slot in NAME_SLOTS if slot in row["required_slots"]]


class Renamer:
    """Random replacement names shaped like the originals: CJK characters from the Chinese corpus (keeping a Latin
    suffix such as ``CRM``), words from the English corpus (keeping capitalisation and a product's last word)."""

    def __init__(self, zh_corpus: list[str], en_corpus: list[str], rng: random.Random):
        self.rng = rng
        self.cjk = sorted({c for text in zh_corpus for c in text if "\u4e00" <= c <= "\u9fff"})
        self.words = sorted({w for text in en_corpus for w in re.findall(r"[a-z]{3,10}", text)})

    def __call__(self, name: str) -> str:
        rng = self.rng
        if re.search(r"[\u4e00-\u9fff]", name):
            latin = re.search(r"[A-Za-z]+$", name)
            n_cjk = len(name) - (len(latin.group()) if latin else 0)
            new = "".join(rng.choice(self.cjk) for _ in range(max(2, n_cjk + rng.choice((-1, 0, 0, 1)))))
            if latin:
                new += "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(len(latin.group())))
            return new
        words = name.split()
        new = [rng.choice(self.words) for _ in words]
        if words[0][0].isupper():
            new = [w.capitalize() for w in new[:-1]] + [words[-1] if len(words) > 1 else new[-1].capitalize()]
        return " ".join(new)


def renamed(row: dict, renamer: Renamer) -> tuple[list[dict], str] | None:
    """(prompt, reference) with every name replaced consistently, or None when the prompt does not state them all."""
    prompt_text = row["prompt"][-1]["content"]
    names = _names(row)
    if not names or not all(name in prompt_text for name in names):
        return None
    mapping = {name: renamer(name) for name in sorted(set(names), key=len, reverse=True)}
    pattern = re.compile("|".join(re.escape(name) for name in mapping))

    def swap(text: str) -> str:
        return pattern.sub(lambda m: mapping[m.group()], text)

    prompt = [{**m, "content": swap(m["content"])} if m["role"] == "user" else m for m in row["prompt"]]
    return prompt, swap(row["reference_rewrites"][0])


def conversation(prompt: list[dict], reference: str) -> str:
    return render_chatml(prompt + [{"role": "assistant", "content": f"<rewrite>{reference}</rewrite>"}])


def training_texts(seed: int = SEED) -> tuple[list[str], list[str], list[str]]:
    """(SFT conversations from the train splits, renamed copies of them, corpus documents)."""
    rng = random.Random(seed)
    corpora = {name: load_corpus(corpus) for name, corpus in DATASETS.items()}
    renamer = Renamer(corpora["query_rewrite"], load_corpus("query_rewrite_en_corpus"), rng)
    sft, copies = [], []
    for dataset in DATASETS:
        for row in load_split(dataset, "train"):
            sft.append(conversation(row["prompt"], row["reference_rewrites"][0]))
            for _ in range(RENAMED_COPIES):
                pair = renamed(row, renamer)
                if pair is not None:
                    copies.append(conversation(*pair))
    return sft, copies, [doc for docs in corpora.values() for doc in docs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="phase 1 steps")
    parser.add_argument("--copy-steps", type=int, default=COPY_STEPS, help="phase 2 steps")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--init", type=Path, default=None, help="a phase-1 model folder: run phase 2 only, from it")
    parser.add_argument("--out", type=Path, default=DATA_DIR / "tiny-rewriter")
    args = parser.parse_args(argv)

    sft, copies, corpus = training_texts(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.init is None:
        tokenizer = build_tokenizer(sft + corpus, vocab_size=VOCAB_SIZE)
        tokenizer.save_pretrained(args.out)
        model = tiny_qwen2(tokenizer, seed=args.seed)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.init)
        model = AutoModelForCausalLM.from_pretrained(args.init)
        tokenizer.save_pretrained(args.out)
    for text in sft[:5] + copies[:5] + corpus[:5]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text, "tokenizer must round-trip exactly"
    if args.init is None:
        # phase 1: conversations twice as often as documents: the documents teach the names, the conversations the task
        texts = sft * 2 + corpus
        random.Random(args.seed).shuffle(texts)
        max_length = max(len(tokenizer(t)["input_ids"]) for t in sft) + 8
        losses = pretrain(model, tokenizer, texts, steps=args.steps, seed=args.seed, max_length=max_length)
        print(f"phase 1 loss: first {losses[0]:.3f}, last {sum(losses[-10:]) / 10:.3f}")
    if args.copy_steps:
        _copy_phase(model, tokenizer, sft, copies, corpus, args.copy_steps, args.seed)
    save_model(model, tokenizer, args.out)
    print(f"wrote {args.out}")
    return 0


def _copy_phase(model, tokenizer, sft, copies, corpus, steps: int, seed: int) -> None:
    """Phase 2: renamed copies teach copying names from the input; the originals and documents keep phase 1."""
    max_length = max(len(tokenizer(t)["input_ids"]) for t in sft + copies) + 8
    texts = copies + sft + corpus
    random.Random(seed + 1).shuffle(texts)
    losses = pretrain(
        model,
        tokenizer,
        texts,
        steps=steps,
        seed=seed + 1,
        lr=COPY_LR,
        batch_size=COPY_BATCH,
        max_length=max_length,
    )
    print(
        f"{len(sft)} conversations, {len(copies)} renamed copies, {len(corpus)} documents; "
        f"phase 2 loss: first {losses[0]:.3f}, last {sum(losses[-10:]) / 10:.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
