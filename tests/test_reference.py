"""The reference is the starting policy: with `sft_adapter_path`, DPO and PPO train from the SFT adapter and their
reference is that adapter loaded a second time, frozen, on the same 4-bit base. At step 0 the KL to the reference is
exactly 0, and it would not be if the base (adapters off) were the reference. PPO's critic can start as the reward
model (`critic_init_from_reward`). A bad `sft_adapter_path` is a recipe error before any weight loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import RECIPES, TINY_MODEL, logged_values, recipe_copy
from trl_ext.recipe import RecipeError, load_recipe

DPO = str(RECIPES / "quickstart" / "dpo.yaml")
PPO = str(RECIPES / "quickstart" / "ppo.yaml")
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_path() -> str:
    from trl_ext.assets import resolve_builtin

    return resolve_builtin(TINY_MODEL)


def _random_adapter(path: Path, task_type: str, seed: int) -> Path:
    """A LoRA adapter of the tiny model as the quickstart recipes configure it (r=16, alpha=32, all linear layers),
    with non-zero B (and head): a policy that differs from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if task_type == "SEQ_CLS":
        base = AutoModelForSequenceClassification.from_pretrained(_tiny_path(), num_labels=1, dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(_tiny_path(), dtype=torch.float32)
    config = LoraConfig(task_type=task_type, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LINEAR)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "score" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory) -> Path:
    return _random_adapter(tmp_path_factory.mktemp("sft") / "sft", "CAUSAL_LM", seed=0)


@pytest.fixture(scope="module")
def reward_adapter(tmp_path_factory) -> Path:
    return _random_adapter(tmp_path_factory.mktemp("rm") / "rm", "SEQ_CLS", seed=1)


def _lora(model, adapter: str) -> dict[str, torch.Tensor]:
    return {
        n.replace(f".{adapter}.", "."): p.detach().clone() for n, p in model.named_parameters() if f".{adapter}." in n
    }


# ------------------------------------------------------------------------------------------------- validation
def test_bad_sft_adapter_path_is_a_recipe_error_before_weights_load(sft_adapter, reward_adapter, tmp_path):
    from trl_ext.train import preflight

    with pytest.raises(RecipeError, match=r"sft_adapter_path .*missing.* does not exist.*output_dir of an SFT run"):
        load_recipe(DPO, ["--sft_adapter_path", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match=r"is not a PEFT adapter directory.*adapter_config.json"):
        load_recipe(DPO, ["--sft_adapter_path", str(tmp_path / "empty")])
    with pytest.raises(RecipeError, match=r"SEQ_CLS adapter, not a causal LM policy.*reward_adapter_path"):
        load_recipe(PPO, ["--sft_adapter_path", str(reward_adapter)])

    other = tmp_path / "other"
    other.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (other / name).write_bytes((sft_adapter / name).read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-7B-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(config))
    recipe = load_recipe(DPO, ["--sft_adapter_path", str(other), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(RecipeError, match=r"was trained on 'Qwen/Qwen2.5-7B-Instruct'.*only fits the base"):
        preflight(recipe)
    with pytest.raises(RecipeError, match="Unknown key 'sft_adapter_path' .* method 'sft'"):
        load_recipe(str(RECIPES / "quickstart" / "sft.yaml"), ["--sft_adapter_path", str(sft_adapter)])
    with pytest.raises(RecipeError, match="critic_init_from_reward .* needs reward_adapter_path"):
        load_recipe(PPO, ["--critic_init_from_reward", "true"])


def test_estimate_counts_the_frozen_reference_adapter(sft_adapter):
    from trl_ext.memory import estimate_memory

    plain = estimate_memory(load_recipe(DPO))
    started = estimate_memory(load_recipe(DPO, ["--sft_adapter_path", str(sft_adapter)]))
    ref = started.component("reference adapter (frozen SFT copy)")
    assert ref.bytes == started.component("adapter weights").bytes > 0  # the same LoRA, weights only
    assert "reference adapter (frozen SFT copy)" not in {c.name for c in plain.components}
    assert started.peak_bytes > plain.peak_bytes


# ------------------------------------------------------------------------------------------------------- DPO
@pytest.mark.slow
def test_dpo_from_sft_adapter_has_zero_kl_at_step_0_and_the_base_would_not(sft_adapter, tmp_path):
    from trl_ext.train import build_trainer

    recipe = load_recipe(
        DPO,
        [
            "--sft_adapter_path",
            str(sft_adapter),
            "--output_dir",
            str(tmp_path / "dpo"),
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
        ],
    )
    trainer = build_trainer(recipe)
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.is_loaded_in_4bit and set(model.peft_config) == {"default", "ref"}
    from peft.utils import load_peft_weights

    saved = load_peft_weights(str(sft_adapter), device="cpu")
    policy, ref = _lora(model, "default"), _lora(model, "ref")
    assert policy.keys() == ref.keys() == saved.keys()
    assert all(torch.equal(policy[k], ref[k]) and torch.equal(policy[k], saved[k]) for k in policy)  # exactly
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # the SFT adapter, not a fresh one
    assert all(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)

    # the per-sequence log-ratio policy/reference on a real batch: 0 with the ref adapter, not 0 with the base
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    completion = batch["completion_mask"][:, 1:].float()

    def seq_logps(context):
        with torch.no_grad(), context:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        return (token * completion).sum(1)

    from contextlib import nullcontext

    from trl.trainer.utils import use_adapter

    from trl_ext.modeling import eval_mode

    eval_mode(model)  # a plain eval() forward would repack the 4-bit weights on CPU and break training
    policy_logps = seq_logps(nullcontext())
    assert torch.equal(policy_logps, seq_logps(use_adapter(model, "ref")))
    assert (policy_logps - seq_logps(use_adapter(model, None))).abs().max() > 0.5  # the base is another policy

    trainer.train()
    chosen = logged_values(trainer, "rewards/chosen")
    margins = logged_values(trainer, "rewards/margins")
    assert len(chosen) == 2
    assert chosen[0] == 0.0 and margins[0] == 0.0  # beta * log(pi / pi_ref) before the first update
    assert abs(chosen[1]) > 0 or abs(margins[1]) > 0  # and it moves once the policy trains
    assert all(torch.equal(v, _lora(model, "ref")[k]) for k, v in ref.items())  # the reference never trains


# ------------------------------------------------------------------------------------------------------- PPO
def _ppo_args(tmp_path, *extra: str) -> list[str]:
    return [
        "--output_dir",
        str(tmp_path / "ppo"),
        "--logging_steps",
        "1",
        "--max_steps",
        "1",
        "--num_ppo_epochs",
        "1",
        "--num_mini_batches",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "8",
        *extra,
    ]


@pytest.mark.slow
def test_ppo_from_sft_adapter_logs_zero_kl_at_step_0_and_the_base_would_not(sft_adapter, tmp_path):
    from trl.trainer.utils import use_adapter

    from trl_ext.train import build_trainer

    trainer = build_trainer(load_recipe(PPO, _ppo_args(tmp_path, "--sft_adapter_path", str(sft_adapter))))
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.peft_config) == {"default", "ref", "critic"}
    from peft.utils import load_peft_weights

    saved = load_peft_weights(str(sft_adapter), device="cpu")
    policy, ref = _lora(model, "default"), _lora(model, "ref")
    assert all(torch.equal(policy[k], ref[k]) and torch.equal(policy[k], saved[k]) for k in policy)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)

    text = trainer.processing_class(["Which river is Velmar on? Velmar sits by the Quiet river."], return_tensors="pt")
    ids, mask = text["input_ids"], text["attention_mask"]
    n = ids.size(1) - 1
    from trl_ext.modeling import eval_mode

    eval_mode(model)  # a plain eval() forward would repack the 4-bit weights on CPU and break training
    with torch.no_grad():
        policy_logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n, batch_size=1)
        ref_logps = trainer._reference_logps(ids, mask, n, 1)
        with use_adapter(model, None):
            base_logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n, batch_size=1)
    trainer._restore_trainable()
    assert torch.equal(policy_logps, ref_logps)
    assert (policy_logps - base_logps).abs().sum() > 0.5  # with the base as reference the KL would not start at 0

    trainer.train()
    kl = logged_values(trainer, "objective/kl")
    # zero up to float noise: the rollout scores policy and reference in separate batched passes (2e-6 with
    # transformers 5.24 / peft 0.21.2); the base as reference differs by > 0.5 nats summed over these tokens (above)
    assert len(kl) == 1 and abs(kl[0]) < 1e-4
    assert all(torch.equal(v, _lora(model, "ref")[k]) for k, v in ref.items())


@pytest.mark.slow
def test_ppo_critic_init_from_reward_starts_the_critic_as_the_reward_model(reward_adapter, tmp_path):
    from trl_ext.train import build_trainer

    recipe_path = recipe_copy(PPO, tmp_path, drop=("reward_funcs", "reward_kwargs"))
    args = _ppo_args(tmp_path, "--reward_adapter_path", str(reward_adapter), "--critic_init_from_reward", "true")
    trainer = build_trainer(load_recipe(recipe_path, args))
    model = trainer.accelerator.unwrap_model(trainer.model)
    critic, reward = _lora(model, "critic"), _lora(model, "reward")
    assert critic.keys() == reward.keys() and all(torch.equal(critic[k], reward[k]) for k in critic)
    assert torch.equal(model.ppo_value_head.summary.weight, trainer._reward_head.weight)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".critic." in n)

    # the critic's value at the last token is the reward model's score of the same text
    texts = ["Which river is Velmar on? Velmar sits by the Quiet river.", "Say hi. Go away."]
    scores = trainer.reward_adapter_scores(texts)
    for i, text in enumerate(texts):
        ids = trainer.processing_class(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad(), trainer._critic_backbone() as backbone:
            hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            value = model.ppo_value_head(hidden[:, -1])
        torch.testing.assert_close(value.float()[0], scores[i], rtol=1e-4, atol=1e-4)
    assert scores.abs().max() > 1e-2

    # without the option the critic starts fresh
    plain = build_trainer(
        load_recipe(recipe_path, _ppo_args(tmp_path / "b", "--reward_adapter_path", str(reward_adapter)))
    )
    fresh = _lora(plain.accelerator.unwrap_model(plain.model), "critic")
    assert not all(torch.equal(fresh[k], reward[k]) for k in fresh)


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "extra"), [("kto.yaml", []), ("grpo.yaml", ["--beta", "0.04"])])
def test_kto_and_grpo_from_sft_adapter_reference_the_same_adapter(sft_adapter, tmp_path, recipe, extra):
    from peft.utils import load_peft_weights

    from trl_ext.train import build_trainer

    args = ["--sft_adapter_path", str(sft_adapter), "--output_dir", str(tmp_path / "out"), *extra]
    trainer = build_trainer(load_recipe(str(RECIPES / "quickstart" / recipe), args))
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert trainer.ref_model is None and set(model.peft_config) == {"default", "ref"}  # TRL uses the `ref` adapter
    saved = load_peft_weights(str(sft_adapter), device="cpu")
    policy, ref = _lora(model, "default"), _lora(model, "ref")
    assert policy.keys() == saved.keys()
    assert all(torch.equal(policy[k], saved[k]) and torch.equal(ref[k], saved[k]) for k in saved)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
