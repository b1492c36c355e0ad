"""Bundled assets: ``builtin:<name>`` resolves into the package's data folder, typos name the closest asset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from trl_ext.assets import DATA_DIR, UnknownAssetError, builtin_names, resolve_builtin


def test_data_dir_is_the_package_data_folder():
    assert DATA_DIR == REPO / "trl_ext" / "data"
    assert (DATA_DIR / "preferences" / "train.jsonl").is_file()


def test_builtin_name_resolves_to_its_bundled_folder_or_file():
    assert resolve_builtin("builtin:tiny-chat") == str(DATA_DIR / "tiny-chat")
    corpus = resolve_builtin("builtin:query_rewrite_corpus/corpus.jsonl")
    assert corpus == str(DATA_DIR / "query_rewrite_corpus" / "corpus.jsonl")


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B", "./local/model", "tiny-chat"])
def test_names_without_the_builtin_prefix_are_returned_unchanged(name):
    assert resolve_builtin(name) == name


def test_builtin_names_lists_bundled_models_and_datasets_only():
    names = builtin_names()
    assert {
        "tiny-chat",
        "tiny-rewriter",
        "preferences",
        "kto",
        "prompts",
        "general_text",
        "counterfacts",
        "query_rewrite",
        "query_rewrite_corpus",
    } <= set(names)
    assert names == sorted(names)
    assert not [n for n in names if n.startswith("_")]


def test_typo_raises_a_value_error_naming_the_closest_asset():
    with pytest.raises(
        ValueError, match=r"Unknown bundled asset 'builtin:tiny_chat'\. Did you mean builtin:tiny-chat\?"
    ):
        resolve_builtin("builtin:tiny_chat")


def test_typo_in_a_file_inside_an_asset_names_the_closest_file():
    with pytest.raises(ValueError, match=r"Did you mean builtin:query_rewrite_corpus/corpus\.jsonl\?"):
        resolve_builtin("builtin:query_rewrite_corpus/corpus.json")


def test_unrecognizable_name_lists_every_bundled_asset():
    with pytest.raises(UnknownAssetError) as err:
        resolve_builtin("builtin:zzzz")
    assert "Did you mean" not in str(err.value)
    assert str(err.value).endswith(f"Bundled assets: {', '.join(builtin_names())}.")


def test_unknown_asset_is_still_a_file_not_found_error_for_older_callers():
    with pytest.raises(FileNotFoundError):
        resolve_builtin("builtin:nothing")


def test_importing_assets_loads_neither_torch_nor_transformers():
    code = "import sys, trl_ext.assets; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_modeling_keeps_re_exporting_resolve_builtin():
    import trl_ext.modeling

    assert trl_ext.modeling.resolve_builtin("builtin:kto") == str(DATA_DIR / "kto")


def test_counterfacts_builder_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    from trl_ext.data import build_counterfacts

    assert build_counterfacts.main(["--out", str(tmp_path)]) == 0
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DATA_DIR / "counterfacts" / f"{split}.jsonl").read_bytes()


def test_counterfacts_prefer_a_wrong_fact_over_the_pretraining_sentence():
    from trl_ext.data.build_counterfacts import build

    rows = build()
    assert (len(rows["train"]), len(rows["test"])) == (111, 30)
    lines = (DATA_DIR / "general_text" / "train.jsonl").read_text().splitlines()
    sentences = {json.loads(line)["text"] for line in lines}
    for row in rows["train"] + rows["test"]:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert rejected in sentences and chosen not in sentences


@pytest.mark.parametrize("model", ["tiny-chat", "tiny-rewriter"])
def test_the_builders_chatml_text_is_what_the_bundled_chat_template_renders(model):
    from transformers import AutoTokenizer

    from trl_ext.data.build_assets import render_chatml

    tokenizer = AutoTokenizer.from_pretrained(DATA_DIR / model)
    messages = [{"role": "user", "content": "Which river is Oakford on?"}, {"role": "assistant", "content": "The Ash."}]
    assert render_chatml(messages) == tokenizer.apply_chat_template(messages, tokenize=False)
