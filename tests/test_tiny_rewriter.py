"""The bundled ``builtin:tiny-rewriter``: its build (renamed copies that teach copying names from the context, the test
split never read) and what the shipped model does on held-out queries."""

from __future__ import annotations

import random

import pytest

from trl_ext.data import build_tiny_rewriter as build

SHIPPED = build.DATA_DIR / "tiny-rewriter"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SHIPPED)


@pytest.mark.parametrize("dataset", ["query_rewrite", "query_rewrite_en"])
def test_renamed_copies_replace_every_stated_name_consistently_and_skip_rows_that_need_an_unstated_one(dataset):
    rows = build.load_split(dataset, "train")
    renamed = skipped = 0
    for row in rows:
        names = build._names(row)
        pair = build.renamed(row, lambda name: f"[{name.upper()}]")
        if pair is None:
            skipped += 1
            assert not names or any(name not in row["prompt"][-1]["content"] for name in names)
            continue
        renamed += 1
        prompt, reference = pair
        assert prompt[0] == row["prompt"][0]  # the system message is kept
        for name in names:
            new = f"[{name.upper()}]"
            assert new in prompt[-1]["content"] and new in reference  # the new name is there to copy
            assert name not in prompt[-1]["content"].replace(new, "") and name not in reference.replace(new, "")
        restored = reference
        for name in sorted(names, key=len):
            restored = restored.replace(f"[{name.upper()}]", name)
        assert restored == row["reference_rewrites"][0]  # nothing but the names changes
    # the ambiguity rows (a feature named only by a fragment) are kept as they are
    assert renamed > 100 and skipped >= sum(r["category"] == "ambiguity" for r in rows)


def test_chinese_renames_are_vocabulary_words_or_other_train_names_of_the_same_shape(tokenizer):
    words = build.vocabulary_words(tokenizer)
    assert len(words) > 500 and "客户公海" in words  # a held-out feature is one vocabulary word
    # every vocabulary word can be drawn: no test split is needed to know the names a held-out row may state
    renamer = build.Renamer(words, build.load_corpus("query_rewrite_en_corpus"), random.Random(0), pool=[])
    drawn = [renamer("云雀CRM") for _ in range(400)]
    suffixed = [n for n in drawn if n[-1].isascii()]
    assert 100 < len(suffixed) < 300 and all(n.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for n in suffixed)
    vocab = set(words)
    for name in drawn:  # one or two vocabulary words
        cjk = name.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        assert cjk in vocab or any(cjk[:i] in vocab and cjk[i:] in vocab for i in range(2, len(cjk) - 1)), name
    pool = ["合同审批", "青鸟OA", "远帆ERP"]
    renamer = build.Renamer(words, [], random.Random(0), pool=pool, permuted_share=1.0)
    assert {renamer("客户画像") for _ in range(20)} == {"合同审批"}  # same shape: no Latin suffix
    assert {renamer("云雀CRM") for _ in range(20)} == {"青鸟OA", "远帆ERP"}
    product = build.Renamer(words, build.load_corpus("query_rewrite_en_corpus"), random.Random(0))("Beacon Analytics")
    assert product.endswith(" Analytics") and product != "Beacon Analytics" and product[0].isupper()


def test_the_build_never_reads_a_test_split_and_is_seeded(monkeypatch, tokenizer):
    seen = []
    load = build.load_split
    monkeypatch.setattr(build, "load_split", lambda dataset, split: seen.append(split) or load(dataset, split))
    sft, corpus = build.training_texts()
    pairs = build.renamed_pairs(tokenizer)
    assert seen and set(seen) == {"train"}
    assert len(pairs) > 15 * len(sft) and corpus
    references = {reference for _, reference in pairs}
    assert len(references) > 10 * len(sft)  # the copies differ from each other
    assert build.renamed_pairs(tokenizer) == pairs  # seeded


def test_the_copy_phase_trains_on_the_rewrite_only_and_continues_a_built_model(tmp_path, tokenizer):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED)
    pairs = build.renamed_pairs(tokenizer)[:4]
    seen = []
    forward = model.forward
    model.forward = lambda **kw: seen.append(kw["labels"]) or forward(**kw)
    build.train_on_rewrites(model, tokenizer, pairs, steps=1, seed=0, lr=0.0, batch_size=2)
    for labels in seen[0]:
        kept = labels[labels != -100].tolist()
        assert tokenizer.decode(kept).startswith("<rewrite>") and tokenizer.decode(kept).endswith("<|im_end|>\n")

    assert build.main(["--init", str(SHIPPED), "--copy-steps", "2", "--out", str(tmp_path)]) == 0
    before, after = load_file(SHIPPED / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert before.keys() == after.keys()
    assert not all(torch.equal(before[k], after[k]) for k in before)  # the weights moved
    text = build.training_texts()[0][0]
    ids = [AutoTokenizer.from_pretrained(path)(text)["input_ids"] for path in (SHIPPED, tmp_path)]
    assert ids[0] == ids[1]  # the tokenizer is the built model's


def test_the_shipped_rewriter_copies_held_out_names_and_beats_the_raw_queries():
    """Held out (test split, greedy): the rewrites retrieve better than the raw queries, and most missing-entity rows
    name the feature their context states although no train row names it."""
    from trl_ext.rewards.eval_rewrite import BENCHMARK_CORPORA, evaluate, generate_rewrites, load_rows

    rows = load_rows("test")
    rewrites = generate_rewrites(str(SHIPPED), rows, max_new_tokens=48)
    result = evaluate(rows, rewrites, BENCHMARK_CORPORA["builtin:query_rewrite"])
    model, raw = result["metrics"]["model"]["MRR@10"], result["metrics"]["original"]["MRR@10"]
    assert raw < 0.25 and model > raw + 0.2, (model, raw)
    train_names = {n for r in build.load_split("query_rewrite", "train") for n in build._names(r)}
    unseen = [
        (r, w)
        for r, w in zip(rows, rewrites)
        if r["category"] == "missing_entity" and r["required_slots"].get("功能", [""])[0] not in train_names
    ]
    copied = sum(r["required_slots"]["功能"][0] in w for r, w in unseen)
    assert len(unseen) >= 15 and copied / len(unseen) > 0.7, (copied, len(unseen))
