"""Kill and resume: a run stopped after a checkpoint and resumed from it ends exactly where the uninterrupted run
ends (DPO, GRPO, PPO killed in the middle of a rollout, and DPO with EWC and the forgetting monitor)."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from conftest import RECIPES, logged_values
from trl_ext.checkpoints import list_checkpoints
from trl_ext.recipe import load_recipe

pytestmark = pytest.mark.slow


class Killed(Exception):
    """Stands for kill -9: the process is gone after this step, with what was saved before it."""


class KillAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def build(recipe_name, output_dir, *overrides):
    from trl_ext.train import build_trainer

    args = ["--output_dir", str(output_dir), "--logging_steps", "1", *overrides]
    return build_trainer(load_recipe(str(RECIPES / "quickstart" / recipe_name), args))


def trained_state(trainer) -> dict[str, torch.Tensor]:
    """Every trainable tensor (actor adapter, and the critic and value head for PPO)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n or "value_head" in n}


def kill_and_resume(tmp_path, recipe_name, overrides, kill_at, capsys):
    """(uninterrupted trainer, resumed trainer, the resume message)."""
    full = build(recipe_name, tmp_path / "full", *overrides)
    full.train()
    killed = build(recipe_name, tmp_path / "killed", *overrides)
    killed.add_callback(KillAtStep(kill_at))
    with pytest.raises(Killed):
        killed.train()
    del killed
    capsys.readouterr()
    resumed = build(recipe_name, tmp_path / "killed", *overrides, "--resume_from_checkpoint", "true")
    resumed.train(resume_from_checkpoint=True)
    return full, resumed, capsys.readouterr().out


def assert_same_weights(full, resumed):
    expected, got = trained_state(full), trained_state(resumed)
    assert expected.keys() == got.keys() and len(expected) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_dpo_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path, capsys):
    overrides = [
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
    ]
    full, resumed, out = kill_and_resume(tmp_path, "dpo.yaml", overrides, kill_at=3, capsys=capsys)
    assert "Resuming from checkpoint-2 (step 2 of 4)" in out
    assert resumed.state.global_step == 4
    assert_same_weights(full, resumed)
    assert logged_values(resumed, "loss")[-2:] == logged_values(full, "loss")[-2:]


def test_grpo_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path, capsys):
    overrides = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size"]
    overrides += ["4", "--num_generations", "4", "--max_completion_length", "8"]
    full, resumed, out = kill_and_resume(tmp_path, "grpo.yaml", overrides, kill_at=3, capsys=capsys)
    assert "Resuming from checkpoint-2 (step 2 of 4)" in out
    assert_same_weights(full, resumed)
    key = "rewards/keyword_reward/mean"
    assert logged_values(resumed, key)[-2:] == logged_values(full, key)[-2:]


def test_ppo_killed_mid_rollout_resumes_from_the_rollout_start_to_the_same_actor_and_critic(tmp_path, capsys):
    # a rollout is used for 2 optimizer steps (2 PPO epochs x 1 mini-batch); a save asked for every step happens
    # only where a rollout ends, so the kill at step 3 (mid-rollout) resumes from checkpoint-2
    overrides = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "1", "--per_device_train_batch_size"]
    overrides += ["4", "--num_ppo_epochs", "2", "--num_mini_batches", "1", "--max_completion_length", "8"]
    full, resumed, out = kill_and_resume(tmp_path, "ppo.yaml", overrides, kill_at=3, capsys=capsys)
    assert [p.name for p in list_checkpoints(tmp_path / "full")] == ["checkpoint-2", "checkpoint-4"]
    assert "Resuming from checkpoint-2 (step 2 of 4)" in out
    assert resumed.state.global_step == 4
    assert_same_weights(full, resumed)  # actor adapter, critic adapter and value head
    for key in ("objective/scores", "loss/value"):
        assert logged_values(resumed, key)[-2:] == logged_values(full, key)[-2:]


def test_ewc_with_the_forgetting_monitor_resumes_with_the_same_baseline_and_penalty(tmp_path, capsys):
    overrides = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size"]
    overrides += ["4", "--ewc_fisher_samples", "16", "--ewc_fisher_max_length", "64", "--forgetting_eval_steps", "2"]
    overrides += ["--forgetting_eval_samples", "8", "--forgetting_max_length", "64"]
    full, resumed, out = kill_and_resume(tmp_path, "dpo-ewc.yaml", overrides, kill_at=3, capsys=capsys)
    assert "Resuming from checkpoint-2 (step 2 of 4)" in out
    assert_same_weights(full, resumed)
    delta = "forgetting/anchor_nll_delta"
    assert logged_values(full, delta)[-1] != 0.0
    assert logged_values(resumed, delta)[-1] == logged_values(full, delta)[-1]
    assert logged_values(resumed, "ewc/penalty")[-1] == logged_values(full, "ewc/penalty")[-1]
