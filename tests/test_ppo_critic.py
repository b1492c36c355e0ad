"""The PPO critic in each of its placements: LoRA of a critic model, a critic smaller than the actor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import RECIPES

QUICKSTART = str(RECIPES / "quickstart" / "ppo.yaml")
FULL_PRECISION = ("--load_in_4bit", "false", "--use_bnb_nested_quant", "false")


def build(output_dir, *overrides):
    """The quickstart's trainer, logging every step into `output_dir`, with `overrides` as command-line flags."""
    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    recipe = load_recipe(QUICKSTART, ["--output_dir", str(output_dir), "--logging_steps", "1", *overrides])
    return build_trainer(recipe)


@pytest.fixture
def small_critic_path(tmp_path, tiny_model_path) -> str:
    """A random-weight decoder half as wide as the tiny actor, with its tokenizer."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(tiny_model_path)
    config.update(dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1))
    torch.manual_seed(0)
    path = tmp_path / "small-critic"
    AutoModel.from_config(config).save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(tiny_model_path) / name, path / name)
    return str(path)


def test_smaller_critic_model_sizes_its_value_head_from_its_own_width(tmp_path, small_critic_path):
    trainer = build(
        tmp_path / "run", *FULL_PRECISION, "--critic", "model", "--critic_model_name_or_path", small_critic_path
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.config.hidden_size == 128
    assert unwrapped.ppo_value_head.summary.in_features == 64
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]], device=trainer.accelerator.device)
    values = trainer._critic_values(ids, torch.ones_like(ids), 4)
    assert values.shape == (1, 4) and torch.isfinite(values).all()


def test_model_critic_lora_comes_from_the_given_keys_even_when_peft_rewrote_the_actor_s_config(
    tmp_path, tiny_model_path
):
    """PEFT turns `all-linear` into the actor's full module names (`model.layers.0.self_attn.q_proj`); a critic
    model (a bare decoder: `layers.0.self_attn.q_proj`) must still get LoRA on the same kinds of modules."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.trainers.ppo import PPOConfig, PPOTrainer

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), peft_config)  # rewrites it in place
    assert "model.layers.0.self_attn.q_proj" in peft_config.target_modules
    args = PPOConfig(
        output_dir=str(tmp_path / "run"),
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=2,
        critic="model",
        critic_model_name_or_path=tiny_model_path,
        report_to="none",
    )
    trainer = PPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        reward_funcs=[lambda completions, **kwargs: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
        peft_config=peft_config,
    )
    backbone = trainer.accelerator.unwrap_model(trainer.model).ppo_critic_backbone
    kinds = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if hasattr(module, "lora_A")}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert backbone.peft_config["default"].r == 4


def _critic_state(trainer) -> dict:
    """Every trainable tensor of the critic (its adapter or model, the value head), cloned."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    return {
        name: param.detach().clone()
        for name, param in unwrapped.named_parameters()
        if param.requires_grad and (".critic." in name or name.startswith(("ppo_value_head.", "ppo_critic_backbone.")))
    }


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [True, False], ids=["4bit", "fp32"])
@pytest.mark.parametrize("critic", ["adapter", "shared", "model"])
def test_each_critic_mode_lowers_its_value_loss_and_resumes_bit_exactly(tmp_path, tiny_model_path, critic, quantized):
    out = tmp_path / "run"
    flags = [
        *(() if quantized else FULL_PRECISION),
        "--critic",
        critic,
        "--critic_model_name_or_path",
        tiny_model_path,
        "--max_completion_length",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--num_mini_batches",
        "2",
        "--num_ppo_epochs",
        "4",
        "--vf_coef",
        "1.0",
        "--save_strategy",
        "steps",
        "--save_steps",
        "8",
    ]
    trainer = build(out, *flags, "--max_steps", "8")  # one rollout, 4 epochs x 2 mini-batches
    assert getattr(trainer.accelerator.unwrap_model(trainer.model), "is_loaded_in_4bit", False) == quantized
    trainer.train()
    value_losses = [h["loss/value"] for h in trainer.state.log_history if "loss/value" in h]
    assert len(value_losses) == 8
    assert sum(value_losses[-2:]) < sum(value_losses[:2]), value_losses  # last epoch vs first, same rollout
    trained = _critic_state(trainer)
    kl_coef = trainer.kl_ctl.value
    assert trained and (out / "checkpoint-8" / "critic" / "value_head.safetensors").is_file()
    del trainer

    checkpoint = str(out / "checkpoint-8")
    resumed = build(out, *flags, "--max_steps", "16", "--resume_from_checkpoint", checkpoint)
    fresh = _critic_state(resumed)
    assert fresh.keys() == trained.keys()
    assert any(not torch.equal(fresh[k], trained[k]) for k in trained)  # a new critic differs ...
    resumed._load_from_checkpoint(checkpoint)
    loaded = _critic_state(resumed)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)  # ... until the checkpoint restores it
    assert resumed.kl_ctl.value == kl_coef


def test_critic_adapter_pass_is_checkpointed_and_recomputes_under_its_own_adapter(tmp_path, monkeypatch):
    """With gradient checkpointing the critic adapter's layers are checkpointed too (they held every activation
    before), and their recompute in the backward -- after the actor's adapter is active again -- runs under the
    critic's adapter: the actor's and the critic's gradients equal those of the same pass without checkpointing."""
    import trl_ext.trainers.ppo_critic as ppo_critic

    trainer = build(tmp_path / "run", *FULL_PRECISION, "--gradient_checkpointing", "true")
    model = trainer.model
    unwrapped = trainer.accelerator.unwrap_model(model)
    # what `Trainer.train` does first with `gradient_checkpointing: true`
    unwrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
    model.train()
    calls = []
    original = ppo_critic._checkpoint_recomputing_under
    monkeypatch.setattr(
        ppo_critic, "_checkpoint_recomputing_under", lambda *a: calls.append(1) or original(*a), raising=True
    )
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]], device=trainer.accelerator.device)
    mask = torch.ones_like(ids)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any("critic" in n for n, _ in trained) and any("default" in n or "actor" in n for n, _ in trained)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: make the two adapters compute different things
        for name, param in trained:
            if "lora_B" in name:
                param.normal_(0.0, 0.2)

    def grads() -> dict:
        model.zero_grad(set_to_none=True)
        values = trainer._critic_values(ids, mask, 4)
        logits = model(input_ids=ids, attention_mask=mask).logits
        (values.pow(2).sum() + logits.float().logsumexp(-1).mean()).backward()
        return {n: p.grad.detach().clone() for n, p in trained if p.grad is not None}

    checkpointed = grads()
    assert len(calls) == len(ppo_critic._backbone(unwrapped).layers)  # every critic layer went through it
    unwrapped.gradient_checkpointing_disable()
    plain = grads()
    assert set(checkpointed) == set(plain) and any("critic" in n for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
