"""The bundled ``builtin:tiny-rewriter``'s build: the renamed copies of its optional copy phase, and that the test split
is never read."""

from __future__ import annotations

import random

import pytest

from trl_ext.data import build_tiny_rewriter as build


@pytest.fixture(scope="module")
def renamer():
    return build.Renamer(
        build.load_corpus("query_rewrite_corpus"), build.load_corpus("query_rewrite_en_corpus"), random.Random(0)
    )


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


def test_chinese_renames_keep_the_latin_suffix_and_draw_cjk_from_the_corpus(renamer):
    name = renamer("云雀CRM")
    assert name != "云雀CRM" and len(name) >= 5 and name[-3:].isascii() and name[-3:].isupper()
    assert all(c in renamer.cjk for c in name[:-3])
    product = renamer("Beacon Analytics")
    assert product.endswith(" Analytics") and product != "Beacon Analytics" and product[0].isupper()


def test_the_build_never_reads_a_test_split(monkeypatch):
    seen = []
    load = build.load_split
    monkeypatch.setattr(build, "load_split", lambda dataset, split: seen.append(split) or load(dataset, split))
    sft, copies, corpus = build.training_texts()
    assert seen and set(seen) == {"train"}
    assert len(copies) > len(sft) and corpus
    # seeded: the same seed gives the same renamed copies
    assert build.training_texts()[1] == copies


def test_the_copy_phase_continues_a_built_model_on_renamed_copies(tmp_path):
    import torch
    from safetensors.torch import load_file

    shipped = build.DATA_DIR / "tiny-rewriter"
    assert build.main(["--init", str(shipped), "--copy-steps", "2", "--out", str(tmp_path)]) == 0
    before, after = load_file(shipped / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert before.keys() == after.keys()
    assert not all(torch.equal(before[k], after[k]) for k in before)  # the weights moved
    from transformers import AutoTokenizer

    text = build.training_texts()[1][0]
    ids = [AutoTokenizer.from_pretrained(path)(text)["input_ids"] for path in (shipped, tmp_path)]
    assert ids[0] == ids[1]  # the tokenizer is the built model's
