"""PPO's defaults that differ from GRPO's: no dropout, a fresh mini-batch permutation every PPO epoch, no GRPO-only
metrics, and no completion silently scored 0 when its reward is missing."""

from __future__ import annotations

import pytest
import torch

from conftest import RECIPES, logged_values

QUICKSTART = str(RECIPES / "quickstart" / "ppo.yaml")
FULL_PRECISION = ("--load_in_4bit", "false", "--use_bnb_nested_quant", "false")
SHORT = ("--max_completion_length", "8", "--num_mini_batches", "2", "--per_device_train_batch_size", "4")


def build(output_dir, *overrides):
    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    recipe = load_recipe(QUICKSTART, ["--output_dir", str(output_dir), "--logging_steps", "1", *overrides])
    return build_trainer(recipe)


def test_ppo_config_turns_dropout_off_by_default(tmp_path):
    import trl

    from trl_ext.trainers.ppo import PPOConfig

    assert trl.GRPOConfig(output_dir=str(tmp_path), bf16=False).disable_dropout is False
    assert PPOConfig(output_dir=str(tmp_path), bf16=False).disable_dropout is True


def test_ppo_runs_four_epochs_per_rollout_unless_told_otherwise(tmp_path):
    import trl

    from trl_ext.trainers.ppo import PPOConfig

    assert trl.GRPOConfig(output_dir=str(tmp_path), bf16=False).num_iterations == 1
    assert PPOConfig(output_dir=str(tmp_path), bf16=False).num_iterations == 4
    assert PPOConfig(output_dir=str(tmp_path), bf16=False, num_ppo_epochs=2).num_iterations == 2
    assert PPOConfig(output_dir=str(tmp_path), bf16=False, num_iterations=3).num_iterations == 3


@pytest.mark.parametrize("critic", ["adapter", "model"])
def test_two_old_log_prob_and_value_passes_agree_exactly_with_lora_dropout(tmp_path, tiny_model_path, critic):
    trainer = build(
        tmp_path / "run",
        *FULL_PRECISION,
        *SHORT,
        "--lora_dropout",
        "0.1",
        "--critic",
        critic,
        "--critic_model_name_or_path",
        tiny_model_path,
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.peft_config["default"].lora_dropout == 0.1
    dropouts = [m for m in unwrapped.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)  # the critic's adapter or model included
    trainer.model.train()  # rollouts run in training mode, where dropout would sample
    ids = torch.randint(4, 700, (4, 12), generator=torch.Generator().manual_seed(0)).to(trainer.accelerator.device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        passes = [trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 6)[0] for _ in range(2)]
        values = [trainer._critic_values(ids, mask, 6) for _ in range(2)]
    assert torch.equal(passes[0], passes[1])
    assert torch.equal(values[0], values[1])


def test_every_ppo_epoch_draws_a_fresh_mini_batch_permutation(tmp_path):
    from unittest import mock

    trainer = build(tmp_path / "run", *FULL_PRECISION, *SHORT, "--num_ppo_epochs", "3")
    rollout = {
        "row": torch.arange(8),
        "prompt_ids": torch.arange(8)[:, None].repeat(1, 3),
        "num_items_in_batch": torch.tensor(24),
    }
    trainer.model.train()
    torch.manual_seed(0)
    epochs = []
    with mock.patch.object(trainer, "_generate_and_score_completions", return_value=rollout):
        for _ in range(3):
            epoch = []
            for _ in range(2):
                batch = trainer._prepare_inputs(None)
                assert torch.equal(batch["prompt_ids"][:, 0], batch["row"])  # rows stay whole
                assert batch["num_items_in_batch"].item() == 24
                epoch.append(batch["row"].tolist())
                trainer._step += 1
            epochs.append(epoch)
    for epoch in epochs:
        assert sorted(epoch[0] + epoch[1]) == list(range(8))  # each epoch sees the whole rollout once
    assert epochs[1] != epochs[0] and epochs[2] != epochs[1]


@pytest.mark.slow
def test_ppo_logs_no_grpo_group_metrics_and_refuses_a_completion_without_reward(tmp_path):
    trainer = build(tmp_path / "run", *FULL_PRECISION, *SHORT, "--num_ppo_epochs", "1", "--max_steps", "2")
    trainer.train()
    logged = set().union(*(h.keys() for h in trainer.state.log_history))
    assert "reward" in logged and "objective/scores" in logged
    assert "frac_reward_zero_std" not in logged
    assert len(logged_values(trainer, "objective/scores")) == 1

    def sometimes_none(completions, **kwargs):
        return [None if i == 0 else 1.0 for i in range(len(completions))]

    trainer = build(tmp_path / "run2", *FULL_PRECISION, *SHORT, "--num_ppo_epochs", "1", "--max_steps", "2")
    trainer.reward_funcs, trainer.reward_func_names = [sometimes_none], ["sometimes_none"]
    from trl_ext.trainers.guards import TrainingStopped

    with pytest.raises(TrainingStopped, match=r"1 of 8 completions .* no reward: .*sometimes_none \(1\)"):
        trainer.train()


def test_a_completion_scored_by_one_of_two_functions_keeps_that_score():
    from trl_ext.trainers.ppo import check_every_completion_scored

    rewards = torch.tensor([[1.0, float("nan")], [float("nan"), 2.0]])
    check_every_completion_scored(rewards, ["math", "code"])  # TRL's multi-task convention: no error
    with pytest.raises(ValueError, match=r"math \(1\), code \(1\)"):
        check_every_completion_scored(torch.tensor([[1.0, 0.5], [float("nan")] * 2]), ["math", "code"])
