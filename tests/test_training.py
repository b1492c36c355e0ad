"""End-to-end training from recipes on the tiny model: DPO (in-process and 2-process DDP), GRPO and KTO."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import RECIPES, accelerate_launch, trl_ext_cli
from trl_ext.recipe import load_recipe
from trl_ext.train import run

pytestmark = pytest.mark.slow


def log_history(output_dir):
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_dpo_qlora_recipe_learns_the_preferences_and_its_adapter_reloads_exactly(tmp_path):
    from peft import PeftModel

    from trl_ext.modeling import load_model_and_tokenizer

    out = tmp_path / "dpo"
    recipe = load_recipe(
        str(RECIPES / "quickstart" / "dpo.yaml"),
        ["--output_dir", str(out), "--logging_steps", "1", "--max_steps", "30"],
    )
    trainer = run(recipe)

    logs = [h for h in log_history(out) if "rewards/margins" in h]
    assert len(logs) == 30
    first, last5 = logs[0], logs[-5:]
    mean = lambda key: sum(h[key] for h in last5) / len(last5)  # noqa: E731
    assert mean("rewards/margins") > first["rewards/margins"] + 0.2
    assert mean("rewards/accuracies") > first["rewards/accuracies"]
    assert mean("rewards/accuracies") >= 0.9

    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    model = trainer.model.eval()
    inputs = trainer.processing_class(["Which river is Velmar on?"], return_tensors="pt")
    with torch.no_grad():
        trained_logits = model(**inputs).logits
    base, _, _ = load_model_and_tokenizer(recipe.model, recipe.training)
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        reloaded_logits = reloaded(**inputs).logits
    # Same 4-bit base (quantization is deterministic) + the saved adapter: equal up to fp32 round-off.
    torch.testing.assert_close(reloaded_logits, trained_logits, atol=1e-5, rtol=1e-5)


def test_dpo_quickstart_completes_under_two_process_ddp(tmp_path):
    out = tmp_path / "ddp"
    proc = accelerate_launch(
        "--config", str(RECIPES / "quickstart" / "dpo.yaml"), "--output_dir", str(out), num_processes=2, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    # 120 pairs sharded over 2 ranks = 60 per rank = ceil(60 / 8) = 8 steps per epoch, so 40 steps are 5 epochs.
    # (Unsharded copies would see 15 steps per epoch: 2.67 epochs.)
    assert state["epoch"] == pytest.approx(40 / math.ceil(60 / 8))
    assert (out / "adapter_model.safetensors").is_file()


def test_grpo_quickstart_learns_to_mention_the_rewarded_keyword(tmp_path):
    out = tmp_path / "grpo"
    # 60 steps instead of the quickstart's 20: the keyword reward's mean per 5-step window rose from about 0.11 (first
    # four windows; 0.09-0.13 by seed) to 0.34, 0.38 and 0.41 (last four) for seeds 42, 7 and 123.
    proc = trl_ext_cli(
        "train", str(RECIPES / "quickstart" / "grpo.yaml"), "--output_dir", str(out), "--max_steps", "60", timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rewards = [h["rewards/keyword_reward/mean"] for h in log_history(out) if "rewards/keyword_reward/mean" in h]
    assert len(rewards) == 12 and all(0.0 <= r <= 1.0 for r in rewards)
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.1, rewards
    assert (out / "adapter_model.safetensors").is_file()


def test_kto_quickstart_runs_and_separates_desirable_from_undesirable(tmp_path):
    out = tmp_path / "kto"
    proc = trl_ext_cli("train", str(RECIPES / "quickstart" / "kto.yaml"), "--output_dir", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [h for h in log_history(out) if "rewards/margins" in h]
    assert logs[-1]["rewards/margins"] > 0.2
    assert (out / "adapter_model.safetensors").is_file()
