"""`method: sft`: TRL's SFTTrainer on the 4-bit tiny model with LoRA, on the bundled instruction conversations
(`builtin:instructions`). The held-out loss falls, with and without EWC; the loss covers the assistant turns only
when `assistant_only_loss` is set; plain text trains on every token; the estimator models one policy pass."""

from __future__ import annotations

import pytest
import torch

from conftest import RECIPES, logged_values
from trl_ext.assets import DATA_DIR
from trl_ext.recipe import load_recipe

SFT = str(RECIPES / "quickstart" / "sft.yaml")


def test_instructions_builder_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    from trl_ext.data import build_instructions

    assert build_instructions.main(["--out", str(tmp_path)]) == 0
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DATA_DIR / "instructions" / f"{split}.jsonl").read_bytes()


def test_instructions_hold_multi_turn_conversations_and_a_disjoint_test_split():
    from trl_ext.data.loading import load_dataset_by_name

    data = load_dataset_by_name("builtin:instructions")
    assert len(data["train"]) == 230 and len(data["test"]) == 40
    roles = [[m["role"] for m in row["messages"]] for row in data["train"]]
    assert all(r[0] == "user" and r[-1] == "assistant" for r in roles)
    assert sum(len(r) == 4 for r in roles) >= 20  # two-turn follow-ups
    as_text = lambda rows: {str(row["messages"]) for row in rows}  # noqa: E731
    assert not as_text(data["train"]) & as_text(data["test"])


def test_sft_recipe_builds_trl_sft_config_with_ewc_keys_and_is_estimated_as_one_policy_pass():
    import trl

    from trl_ext.memory import estimate_memory

    recipe = load_recipe(SFT)
    assert recipe.method == "sft" and isinstance(recipe.training, trl.SFTConfig)
    assert recipe.training.assistant_only_loss and recipe.training.ewc_lambda == 0.0
    est = estimate_memory(load_recipe(SFT, ["--max_length", "1024", "--per_device_train_batch_size", "4"]))
    names = {c.name for c in est.components}
    assert "reference pass" not in names and "rollout buffers" not in names
    assert "4 sequences x 1024 tokens" in est.component("activations").formula
    doubled = estimate_memory(load_recipe(SFT, ["--max_length", "1024", "--per_device_train_batch_size", "8"]))
    assert doubled.component("activations").bytes == pytest.approx(2 * est.component("activations").bytes)


@pytest.mark.slow
def test_assistant_only_loss_trains_the_assistant_turns_and_plain_text_every_token(tmp_path):
    from trl_ext.train import build_trainer

    trainer = build_trainer(load_recipe(SFT, ["--output_dir", str(tmp_path / "a")]))
    tokenizer = trainer.processing_class
    row = next(r for r in trainer.train_dataset if tokenizer.decode(r["input_ids"]).count("<|im_start|>user") == 2)
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])
    text = tokenizer.decode(row["input_ids"])
    answers = [part.split("<|im_end|>")[0] + "<|im_end|>" for part in text.split("<|im_start|>assistant\n")[1:]]
    assert trained == "".join(answers)  # both answers with their end-of-turn token, no user turn, no role header
    assert "user" not in trained

    plain = build_trainer(
        load_recipe(
            SFT,
            [
                "--output_dir",
                str(tmp_path / "b"),
                "--dataset_name",
                "builtin:general_text",
                "--assistant_only_loss",
                "false",
                "--eval_strategy",
                "no",
            ],
        )
    )
    batch = plain.data_collator([plain.train_dataset[i] for i in range(2)])
    assert ((batch["labels"] != -100) == (batch["attention_mask"] == 1)).all()  # every real token is trained


def _held_out_loss_before_and_after(tmp_path, *overrides: str):
    from trl_ext.train import build_trainer

    recipe = load_recipe(SFT, ["--output_dir", str(tmp_path), "--max_steps", "40", *overrides])
    trainer = build_trainer(recipe)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return trainer, before, after


@pytest.mark.slow
def test_sft_lowers_the_held_out_loss_and_saves_a_loadable_adapter(tmp_path):
    trainer, before, after = _held_out_loss_before_and_after(tmp_path)
    assert after < 0.75 * before, (before, after)  # held-out conversations: at least 25 % lower loss
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()

    from trl_ext.configs.policy import check_policy_adapter

    config = check_policy_adapter(str(tmp_path / "final"), "builtin:tiny-chat")  # what sft_adapter_path accepts
    assert config["task_type"] == "CAUSAL_LM"


@pytest.mark.slow
def test_sft_with_ewc_lowers_the_held_out_loss_and_applies_the_penalty(tmp_path):
    trainer, before, after = _held_out_loss_before_and_after(
        tmp_path, "--ewc_lambda", "50", "--ewc_fisher_samples", "64", "--logging_steps", "5"
    )
    assert after < 0.75 * before, (before, after)
    penalties = logged_values(trainer, "ewc/penalty")
    assert len(penalties) == 8 and penalties[-1] > 0 and all(torch.isfinite(torch.tensor(penalties)))


@pytest.mark.slow
def test_packing_fills_max_length_blocks_and_keeps_the_assistant_only_labels(tmp_path):
    from trl_ext.train import build_trainer

    overrides = ["--output_dir", str(tmp_path), "--packing", "true", "--packing_strategy", "wrapped"]
    trainer = build_trainer(load_recipe(SFT, [*overrides, "--eval_strategy", "no"]))
    rows = trainer.train_dataset
    lengths = [len(row["input_ids"]) for row in rows]
    assert len(rows) < 230 and all(n == 128 for n in lengths[:-1])  # conversations packed into 128-token blocks
    text = trainer.processing_class.decode(rows[0]["input_ids"])
    assert text.count("<|im_start|>user") >= 3  # several conversations per block
    masked = sum(label == -100 for label in rows[0]["labels"])
    assert 0 < masked < 128  # user turns and headers still carry no loss
