"""memcheck: its CPU message and the synthetic data it would train on."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from trl_ext.memcheck import memcheck_cli, synthetic_lengths, synthetic_rows, word_tokenizer
from trl_ext.recipe import load_recipe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_memcheck_on_cpu_exits_with_a_clear_message(capsys):
    code = memcheck_cli([str(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml"), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs a CUDA GPU" in err and "trl-ext estimate" in err


def test_dpo_synthetic_rows_fill_max_length_exactly():
    recipe = load_recipe(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml")
    lengths = synthetic_lengths(recipe)
    assert lengths == {"prompt": 256, "completion": 768}  # prompt + completion = max_length 1024
    rows = synthetic_rows("dpo", lengths, 3, vocab_size=1000)
    tok = word_tokenizer(1000)
    assert len(tok.vocab) == 1000 and tok.eos_token_id == 999
    assert [len(tok(r["prompt"])["input_ids"]) for r in rows] == [256] * 3
    assert [len(tok(r["chosen"])["input_ids"]) for r in rows] == [768] * 3
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}


def test_grpo_synthetic_lengths_use_the_completion_limit(tmp_path):
    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        "method: grpo\nmodel_name_or_path: Qwen/Qwen2.5-1.5B-Instruct\ndataset_name: builtin:prompts\n"
        "reward_funcs: [trl_ext.rewards.keyword.KeywordReward]\nmax_completion_length: 200\n"
        "output_dir: outputs/x\n"
    )
    lengths = synthetic_lengths(load_recipe(recipe), prompt_length=96)
    assert lengths == {"prompt": 96, "completion": 200}
    rows = synthetic_rows("kto", lengths, 4, vocab_size=500)
    assert [r["label"] for r in rows] == [True, False, True, False]
