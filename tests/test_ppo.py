"""PPO with a critic on the tiny model: config validation, learning under 4-bit + LoRA, critic save/resume, DDP."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import RECIPES, accelerate_launch, logged_values

QUICKSTART = str(RECIPES / "quickstart" / "ppo.yaml")
CLASSIC_METRICS = [
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "policy/approxkl",
    "policy/clipfrac",
    "loss/policy",
    "loss/value",
    "val/clipfrac",
    "val/mean",
    "val/var",
]


def build(output_dir, *overrides):
    """The quickstart's trainer, logging every step into `output_dir`, with `overrides` as command-line flags."""
    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    recipe = load_recipe(QUICKSTART, ["--output_dir", str(output_dir), "--logging_steps", "1", *overrides])
    return build_trainer(recipe)


# --------------------------------------------------------------------------------------------------- validation
def test_ppo_config_rejects_bad_input_with_the_fix(tmp_path):
    from trl_ext.trainers.ppo import PPOConfig, PPOTrainer

    with pytest.raises(ValueError, match="set kl_coef instead of beta"):
        PPOConfig(output_dir=str(tmp_path), bf16=False, beta=0.1)
    with pytest.raises(ValueError, match="critic must be one of adapter, shared, model"):
        PPOConfig(output_dir=str(tmp_path), bf16=False, critic="value")
    with pytest.raises(ValueError, match="critic_model_name_or_path"):
        PPOConfig(output_dir=str(tmp_path), bf16=False, critic="model")
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        PPOConfig(output_dir=str(tmp_path), bf16=False, lam=1.5)
    with pytest.raises(ValueError, match="PPO needs at least 2 completions per rollout"):
        PPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=1, gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match="use_peft: true"):
        PPOTrainer(model=None, args=PPOConfig(output_dir=str(tmp_path), bf16=False), peft_config=None)


def test_ppo_config_maps_epochs_and_mini_batches_and_keeps_one_completion_per_prompt(tmp_path):
    from trl_ext.trainers.ppo import PPOConfig

    config = PPOConfig(
        output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=4, num_ppo_epochs=3, num_mini_batches=2
    )
    assert (config.num_iterations, config.steps_per_generation, config.generation_batch_size) == (3, 2, 8)
    assert config.num_generations == 1 and config.beta == 0.0 and config.loss_type == "bnpo"


def test_quickstart_recipe_validates_on_every_load_and_unknown_ppo_key_is_named(tmp_path):
    from trl_ext.recipe import RecipeError, load_recipe

    for _ in range(2):  # a second load in the same process validates the reward_kwargs mapping again
        recipe = load_recipe(QUICKSTART, ["--output_dir", str(tmp_path)])
        assert (recipe.method, recipe.training.critic, recipe.model.load_in_4bit, recipe.training.num_iterations) == (
            "ppo",
            "adapter",
            True,
            4,
        )
        assert recipe.script.reward_kwargs == {"KeywordReward": {"keywords": ["river"]}}
    with pytest.raises(RecipeError, match="Did you mean 'kl_coef'"):
        load_recipe(QUICKSTART, ["--kl_coeff", "0.1"])
    with pytest.raises(
        RecipeError, match="--critic nope: Recipe key 'critic' has value 'nope'; allowed values: adapter, shared, model"
    ):
        load_recipe(QUICKSTART, ["--critic", "nope"])


def test_grpo_config_still_rejects_one_completion_per_prompt(tmp_path):
    """`PPOConfig` works around this check; once TRL accepts one completion per prompt, the workaround can go."""
    import trl

    with pytest.raises(ValueError, match="GRPO requires at least 2 generations per prompt"):
        trl.GRPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=4, num_generations=1)


def test_grpo_private_methods_ppo_extends_keep_their_parameters_and_callers():
    import inspect

    import transformers
    import trl
    from trl.trainer.utils import use_adapter

    def parameters(function):
        return list(inspect.signature(function).parameters)

    grpo, trainer = trl.GRPOTrainer, transformers.Trainer
    assert parameters(grpo._generate_and_score_completions) == ["self", "inputs"]
    assert parameters(grpo._calculate_rewards) == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert parameters(grpo._get_per_token_logps_and_entropies)[:6] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
    ]
    assert parameters(grpo._generate_single_turn)[:2] == ["self", "prompt_ids"]
    assert "self._generate_single_turn(" in inspect.getsource(grpo._generate)
    assert "unwrapped_model.generate(" in inspect.getsource(grpo._generate_single_turn)  # what ppo_rollout hooks
    assert parameters(trainer._load_from_checkpoint) == ["self", "resume_from_checkpoint", "model"]
    assert parameters(trainer._save) == ["self", "output_dir", "state_dict"]
    assert parameters(use_adapter) == ["model", "adapter_name"]
    # PPO's overrides see what GRPO computes only while GRPO computes it through them
    assert "self._calculate_rewards(" in inspect.getsource(grpo._generate_and_score_completions)
    loss_source = inspect.getsource(grpo._compute_loss)
    assert "self._get_per_token_logps_and_entropies(" in loss_source
    assert "advantages.dim() == 1" in loss_source  # (B, T) advantages pass through GRPO's loss as they are
    assert "self._load_from_checkpoint(resume_from_checkpoint" in inspect.getsource(trainer.train)
    assert "self._save(output_dir" in inspect.getsource(trainer.save_model)


@pytest.mark.parametrize("critic", ["adapter", "model"])
def test_vllm_weight_sync_sends_the_actor_only(tmp_path, tiny_model_path, critic):
    import inspect
    from unittest import mock

    import trl
    from transformers import AutoModelForCausalLM
    from trl.generation.vllm_generation import VLLMGeneration

    # what the patch relies on: the trainer's backend is `vllm_generation` and every sync reads this generator
    assert "self.vllm_generation = VLLMGeneration(" in inspect.getsource(trl.GRPOTrainer.__init__)
    assert list(inspect.signature(VLLMGeneration._iter_named_params).parameters) == ["self"]
    assert inspect.isgeneratorfunction(VLLMGeneration._iter_named_params)
    assert "self._iter_named_params()" in inspect.getsource(VLLMGeneration.sync_weights)

    trainer = build(
        tmp_path / "run",
        "--load_in_4bit",
        "false",
        "--use_bnb_nested_quant",
        "false",
        "--critic",
        critic,
        "--critic_model_name_or_path",
        tiny_model_path,
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero actor and critic LoRA B: merging the critic's would move the sent weights
        for name, param in unwrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    with mock.patch.object(VLLMGeneration, "_init_vllm"):  # TRL's real class, without starting vLLM
        generation = VLLMGeneration(unwrapped, trainer.accelerator, trainer.processing_class)
    sent_unfiltered = {name for name, _ in generation._iter_named_params()}
    trainer._keep_critic_out_of_vllm(generation)
    sent = {name: param.clone() for name, param in generation._iter_named_params()}

    base_names = {name for name, _ in AutoModelForCausalLM.from_pretrained(tiny_model_path).named_parameters()}
    assert set(sent) == base_names
    critic_names = sent_unfiltered - base_names
    assert {"ppo_value_head.summary.weight", "ppo_value_head.summary.bias"} <= critic_names
    assert all(name.startswith(("ppo_value_head.", "ppo_critic_backbone.")) for name in critic_names)
    assert any(name.startswith("ppo_critic_backbone.") for name in critic_names) == (critic == "model")
    q_proj = unwrapped.base_model.model.model.layers[0].self_attn.q_proj
    actor_weight = q_proj.base_layer.weight + q_proj.get_delta_weight("default")
    torch.testing.assert_close(sent["model.layers.0.self_attn.q_proj.weight"], actor_weight)
    assert unwrapped.active_adapter == "default" and not q_proj.merged


def test_model_critic_gets_its_own_lora_on_the_actor_s_module_kinds(tmp_path, tiny_model_path):
    trainer = build(
        tmp_path / "run",
        "--load_in_4bit",
        "false",
        "--use_bnb_nested_quant",
        "false",
        "--critic",
        "model",
        "--critic_model_name_or_path",
        tiny_model_path,
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    backbone = unwrapped.ppo_critic_backbone
    assert set(unwrapped.peft_config) == {"default"}
    assert backbone.peft_config["default"].task_type == "FEATURE_EXTRACTION"

    def adapted_kinds(model):
        return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}

    assert (
        adapted_kinds(backbone)
        == adapted_kinds(unwrapped)
        == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    )
    ids = torch.tensor([[5, 6, 7, 8, 9]], device=trainer.accelerator.device)
    values = trainer._critic_values(ids, torch.ones_like(ids), 3)
    assert values.shape == (1, 3) and values.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_ppo_4bit_lora_raises_the_keyword_score_with_bounded_kl(tmp_path):
    trainer = build(tmp_path / "run")
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.is_loaded_in_4bit
    assert set(unwrapped.peft_config) == {"default", "critic"}
    trainer.train()
    scores = logged_values(trainer, "objective/scores")
    kls = logged_values(trainer, "objective/kl")
    assert len(scores) == 8  # 64 steps / (4 epochs x 2 mini-batches)
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.2, scores
    assert all(abs(k) < 10.0 for k in kls), kls
    logged = set().union(*(h.keys() for h in trainer.state.log_history))
    assert set(CLASSIC_METRICS) <= logged
    assert all(v >= 0 for v in logged_values(trainer, "loss/value"))

    trainer.save_model(str(tmp_path / "final"))
    critic = tmp_path / "final" / "critic"
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()
    assert {"adapter_model.safetensors", "adapter_config.json", "value_head.safetensors", "ppo_state.json"} <= {
        p.name for p in critic.iterdir()
    }
    from safetensors.torch import load_file

    actor_keys = load_file(str(tmp_path / "final" / "adapter_model.safetensors")).keys()
    assert not any("value_head" in k or ".critic." in k for k in actor_keys)


def _critic_state(trainer):
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    adapter = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if ".critic." in n}
    head = {n: p.detach().clone() for n, p in unwrapped.ppo_value_head.named_parameters()}
    return adapter, head


@pytest.mark.slow
def test_checkpoint_saves_critic_and_resume_restores_it_and_continues(tmp_path):
    out = tmp_path / "run"
    short = ["--num_ppo_epochs", "2", "--save_strategy", "steps", "--save_steps", "4", "--max_completion_length", "12"]
    first = build(out, *short, "--max_steps", "4")
    first.train()
    saved_adapter, saved_head = _critic_state(first)
    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "critic" / "value_head.safetensors").is_file()
    assert json.loads((checkpoint / "critic" / "ppo_state.json").read_text())["critic"] == "adapter"
    del first

    resumed = build(out, *short, "--max_steps", "8", "--resume_from_checkpoint", str(checkpoint))
    _, fresh_head = _critic_state(resumed)
    assert not torch.equal(fresh_head["summary.weight"], saved_head["summary.weight"])
    resumed._load_from_checkpoint(str(checkpoint))
    loaded_adapter, loaded_head = _critic_state(resumed)
    assert loaded_adapter.keys() == saved_adapter.keys() and len(loaded_adapter) > 0
    assert all(torch.equal(loaded_adapter[k], saved_adapter[k]) for k in saved_adapter)
    assert all(torch.equal(loaded_head[k], saved_head[k]) for k in saved_head)
    # nothing that should train was frozen by the adapter switching during loading
    unwrapped = resumed.accelerator.unwrap_model(resumed.model)
    assert all(p.requires_grad for n, p in unwrapped.named_parameters() if "lora_" in n or "value_head" in n)

    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 8
    assert [h["step"] for h in resumed.state.log_history if "loss/value" in h] == [1, 2, 3, 4, 5, 6, 7, 8]
    after_adapter, after_head = _critic_state(resumed)
    assert not torch.equal(after_head["summary.weight"], saved_head["summary.weight"])  # the critic kept training
    assert any(not torch.equal(after_adapter[k], saved_adapter[k]) for k in saved_adapter)


@pytest.mark.slow
def test_shared_critic_trains_a_value_head_on_the_actor_adapter(tmp_path):
    trainer = build(
        tmp_path / "run",
        "--critic",
        "shared",
        "--max_steps",
        "2",
        "--num_ppo_epochs",
        "1",
        "--max_completion_length",
        "12",
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert set(unwrapped.peft_config) == {"default"}
    before = unwrapped.ppo_value_head.summary.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, unwrapped.ppo_value_head.summary.weight)
    value_losses = logged_values(trainer, "loss/value")
    assert len(value_losses) == 2 and all(0.0 <= v < float("inf") for v in value_losses)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks two-process DDP over gloo on CPU")
def test_two_process_ddp_on_cpu_completes_and_saves_the_critic(tmp_path):
    out = tmp_path / "ddp"
    result = accelerate_launch(
        "--config",
        QUICKSTART,
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--num_ppo_epochs",
        "1",
        "--num_mini_batches",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "12",
        num_processes=2,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "critic" / "value_head.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert any("objective/scores" in h for h in state["log_history"])


@pytest.mark.slow
def test_ewc_penalty_applies_to_the_actor_adapter_under_ppo(tmp_path):
    trainer = build(
        tmp_path / "run",
        "--ewc_lambda",
        "100",
        "--ewc_fisher_samples",
        "8",
        "--ewc_fisher_max_length",
        "64",
        "--max_steps",
        "3",
        "--num_ppo_epochs",
        "3",
        "--num_mini_batches",
        "1",
        "--max_completion_length",
        "12",
    )
    assert trainer.ewc_penalty is not None
    assert {m.adapter for m in trainer.ewc_penalty.modules} == {"default"}  # the critic adapter is not anchored
    trainer.train()
    penalties = [h["ewc/penalty"] for h in trainer.state.log_history if "ewc/penalty" in h]
    assert len(penalties) == 3
    assert penalties[-1] > 0.0 and all(torch.isfinite(torch.tensor(penalties)))
