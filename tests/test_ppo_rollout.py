"""The rollout's old log-probabilities are read off generation, equal to a forward pass, without that pass."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import trl

from conftest import RECIPES

QUICKSTART = str(RECIPES / "quickstart" / "ppo.yaml")


def build(output_dir, *overrides):
    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    recipe = load_recipe(QUICKSTART, ["--output_dir", str(output_dir), "--logging_steps", "1", *overrides])
    return build_trainer(recipe)


@pytest.mark.parametrize("quantized", [False, True])
def test_old_log_probs_from_generation_equal_a_forward_pass_and_replace_it(tmp_path, quantized):
    precision = () if quantized else ("--load_in_4bit", "false", "--use_bnb_nested_quant", "false")
    trainer = build(
        tmp_path / "run",
        *precision,
        "--max_completion_length",
        "10",
        "--per_device_train_batch_size",
        "4",
        "--temperature",
        "0.7",
    )
    trainer.model.train()
    rows = [trainer.train_dataset[i] for i in range(8)]
    grpo_logps = trl.GRPOTrainer._get_per_token_logps_and_entropies
    with mock.patch.object(trl.GRPOTrainer, "_get_per_token_logps_and_entropies", autospec=True) as forward:
        forward.side_effect = grpo_logps
        output = trainer._generate_and_score_completions(rows)
    assert forward.call_count == 1  # the reference pass only; the old log-probabilities came from generation
    input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    with torch.no_grad():
        recomputed, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, output["completion_ids"].size(1)
        )
    mask = output["completion_mask"].bool()
    sampled = output["old_per_token_logps"]
    assert mask.sum() > 8 and sampled.shape == recomputed.shape
    torch.testing.assert_close(sampled[mask], recomputed[mask], atol=1e-4, rtol=1e-4)
    assert not torch.equal(sampled[mask], torch.zeros_like(sampled[mask]))


def test_recorded_log_probs_are_refused_for_other_completions(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    from trl_ext.trainers.ppo_rollout import SampledLogps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    recorder = SampledLogps(model, temperature=1.0)
    torch.manual_seed(0)
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5, do_sample=True
    )
    recorder.remove()
    completions = out[:, 3:].tolist()
    logps = recorder.completion_logps(completions)
    with torch.no_grad():
        full = torch.log_softmax(model(out).logits[:, 2:-1].float(), dim=-1).gather(2, out[:, 3:, None]).squeeze(2)
    assert logps is not None
    torch.testing.assert_close(torch.tensor(logps), full, atol=1e-5, rtol=1e-5)
    other = [completions[0][:2] + [completions[0][2] + 1] + completions[0][3:], completions[1]]
    assert recorder.completion_logps(other) is None  # not the tokens that were sampled
    assert recorder.completion_logps([completions[0] + [1], completions[1]]) is None  # more steps than recorded
