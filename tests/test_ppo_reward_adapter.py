"""PPO's reward model as a LoRA adapter on the actor's base (``reward_adapter_path``): scores equal the adapter's own
``AutoModelForSequenceClassification``, it is one more weighted reward function, it never leaves with the actor's
adapter, it trains under 4-bit as the only reward, and bad paths fail early naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import RECIPES, TINY_MODEL, logged_values, recipe_copy

QUICKSTART = str(RECIPES / "quickstart" / "ppo.yaml")
PROMPTS = ["Name a river in Europe.", "Where do salmon swim?", "Say hi."]
COMPLETIONS = [" The Danube is a long river.", " Up the river to spawn, against the current, every autumn.", " hi"]
ADAPTER_NAME = "tiny-rm"  # the adapter directory's name: the reward's name in the logs


def _tiny_path() -> str:
    from trl_ext.assets import resolve_builtin

    return resolve_builtin(TINY_MODEL)


@pytest.fixture(scope="module")
def reward_adapter(tmp_path_factory) -> Path:
    """A seq-cls LoRA reward adapter on the tiny model, as RewardTrainer + LoRA saves one, with non-zero B and head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(_tiny_path(), num_labels=1, dtype=torch.float32)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "score" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    path = tmp_path_factory.mktemp("rm") / ADAPTER_NAME
    model.save_pretrained(str(path))
    return path


def _reference_scores(adapter: Path, texts: list[str]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tiny_path())
    base = AutoModelForSequenceClassification.from_pretrained(_tiny_path(), num_labels=1, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    inputs = tokenizer(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        return model(**inputs).logits[:, 0].float()


@pytest.fixture(scope="module")
def fp32_trainer(reward_adapter, tmp_path_factory):
    """Non-quantized fp32 trainer: the quickstart's keyword reward plus the reward adapter, weighted 1.0 and 0.5."""

    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    directory = tmp_path_factory.mktemp("ppo-rm")
    recipe = recipe_copy(
        QUICKSTART,
        directory,
        reward_weights=[1.0, 0.5],
        reward_adapter_path=str(reward_adapter),
        load_in_4bit=False,
        use_bnb_nested_quant=False,
        bf16=False,
        output_dir=str(directory / "run"),
    )
    return build_trainer(load_recipe(recipe))


# ------------------------------------------------------------------------------------------------------ scoring
def test_reward_adapter_scores_equal_its_sequence_classification_model(fp32_trainer, reward_adapter):
    trainer = fp32_trainer
    texts = trainer.reward_adapter_texts(PROMPTS, COMPLETIONS)
    assert texts == [p + c for p, c in zip(PROMPTS, COMPLETIONS)]
    expected = _reference_scores(reward_adapter, texts)
    assert expected.abs().min() > 1e-3 and expected.std() > 1e-3  # a real, text-dependent score
    scores = trainer.reward_adapter_scores(texts)
    torch.testing.assert_close(scores.cpu(), expected, rtol=1e-5, atol=1e-5)

    # through TRL's reward path: one more reward function, weighted by reward_weights
    assert trainer.reward_func_names == ["keyword_reward", ADAPTER_NAME]
    assert trainer.reward_weights.tolist() == [1.0, 0.5]
    ids = [trainer.processing_class(c, add_special_tokens=False)["input_ids"] for c in COMPLETIONS]
    per_func = trainer._calculate_rewards([{"prompt": p} for p in PROMPTS], PROMPTS, COMPLETIONS, ids)
    assert per_func[:, 0].tolist() == [1.0, 1.0, 0.0]  # "river" in the first two
    torch.testing.assert_close(per_func[:, 1].cpu(), expected, rtol=1e-5, atol=1e-5)


def test_scoring_leaves_the_actor_active_and_the_reward_adapter_frozen(fp32_trainer):
    trainer = fp32_trainer
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert set(unwrapped.peft_config) == {"default", "critic", "reward"}
    trainer.reward_adapter_scores(["a b c", "d"])
    assert unwrapped.active_adapter == "default"
    params = dict(unwrapped.named_parameters())
    reward = [n for n in params if ".reward." in n]
    assert len(reward) == 2 * 7 * 2  # lora_A + lora_B on 7 modules x 2 layers
    assert not any(params[n].requires_grad for n in reward)
    assert all(params[n].requires_grad for n in params if ".default." in n or ".critic." in n or "value_head" in n)
    assert not any("score" in n for n in params)  # the head is the trainer's, not the actor's
    assert not trainer._reward_head.weight.requires_grad
    optimizer = trainer.create_optimizer()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer.isdisjoint({id(params[n]) for n in reward} | {id(trainer._reward_head.weight)})


def test_actor_saved_adapter_holds_no_reward_adapter_or_head(fp32_trainer, tmp_path):
    from safetensors.torch import load_file

    fp32_trainer.save_model(str(tmp_path / "final"))
    keys = load_file(str(tmp_path / "final" / "adapter_model.safetensors")).keys()
    assert keys and all(".reward." not in k and "score" not in k for k in keys)
    assert not (tmp_path / "final" / "reward").exists()
    critic_keys = load_file(str(tmp_path / "final" / "critic" / "adapter_model.safetensors")).keys()
    assert critic_keys and all(".reward." not in k and "score" not in k for k in critic_keys)
    unwrapped = fp32_trainer.accelerator.unwrap_model(fp32_trainer.model)
    assert "reward" in unwrapped.peft_config  # still loaded after saving


def test_reward_adapter_save_writes_what_trainer_save_writes_less_the_reward_adapter(fp32_trainer, tmp_path):
    from safetensors.torch import load_file
    from transformers import Trainer

    def files(directory):
        return {path.relative_to(directory).as_posix() for path in directory.rglob("*")}

    fp32_trainer._save(str(tmp_path / "ppo"))
    Trainer._save(fp32_trainer, str(tmp_path / "trainer"))
    ppo_files, trainer_files = files(tmp_path / "ppo"), files(tmp_path / "trainer")
    reward_files = {name for name in trainer_files if name.split("/")[0] == "reward"}
    # what Trainer._save alone adds: PEFT saves every adapter it holds
    assert reward_files == {"reward", "reward/adapter_config.json", "reward/adapter_model.safetensors"}
    assert ppo_files == trainer_files - reward_files
    expected = {"adapter_model.safetensors", "tokenizer.json", "training_args.bin", "critic/adapter_model.safetensors"}
    assert expected < ppo_files
    for name in ("adapter_model.safetensors", "critic/adapter_model.safetensors"):
        ours, theirs = load_file(str(tmp_path / "ppo" / name)), load_file(str(tmp_path / "trainer" / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = "adapter_config.json"
    assert (tmp_path / "ppo" / config).read_text() == (tmp_path / "trainer" / config).read_text()


# --------------------------------------------------------------------------------------------------- validation
def test_reward_adapter_path_errors_name_the_problem_and_fix(reward_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    from trl_ext.recipe import RecipeError, load_recipe
    from trl_ext.trainers.ppo import PPOConfig, PPOTrainer

    def config(path, **kwargs):
        return PPOConfig(output_dir=str(tmp_path / "out"), bf16=False, reward_adapter_path=str(path), **kwargs)

    with pytest.raises(ValueError, match=r"reward_adapter_path .*nope does not exist\. Point it at the directory"):
        config(tmp_path / "nope")
    with pytest.raises(RecipeError, match="nope does not exist"):  # a recipe reports it before any weights load
        load_recipe(QUICKSTART, ["--reward_adapter_path", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match="is not a PEFT adapter directory: it lacks adapter_config.json and adapter_model.safetensors"
    ):
        config(tmp_path / "empty")

    headless = tmp_path / "headless"
    shutil.copytree(reward_adapter, headless)
    weights = load_file(str(headless / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if "score" not in k}, str(headless / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="has no score head .* Train it with task_type SEQ_CLS"):
        config(headless)

    from peft import LoraConfig

    with pytest.raises(ValueError, match="the actor must use LoRA: set use_peft: true"):
        PPOTrainer(model=_tiny_path(), args=config(reward_adapter, critic="shared"), peft_config=None)
    other = tmp_path / "other-base"
    shutil.copytree(reward_adapter, other)
    adapter_config = json.loads((other / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "Qwen/Qwen2.5-7B-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(adapter_config))
    message = (
        rf"trained on 'Qwen/Qwen2\.5-7B-Instruct', but the actor is '{_tiny_path()}': a LoRA adapter only fits "
        "the base it was trained on"
    )
    with pytest.raises(ValueError, match=message):
        PPOTrainer(model=_tiny_path(), args=config(other), peft_config=LoraConfig())


# ----------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_4bit_ppo_trains_with_the_reward_adapter_as_the_only_reward(reward_adapter, tmp_path):
    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    # the recipe path itself: the adapter is the recipe's only reward (no reward_funcs, no reward model)
    recipe_path = recipe_copy(QUICKSTART, tmp_path, drop=("reward_funcs", "reward_kwargs"))
    recipe = load_recipe(
        recipe_path,
        [
            "--output_dir",
            str(tmp_path / "run"),
            "--logging_steps",
            "1",
            "--reward_adapter_path",
            str(reward_adapter),
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
        ],
    )
    trainer = build_trainer(recipe)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.is_loaded_in_4bit and trainer.reward_func_names == [ADAPTER_NAME]
    frozen = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if ".reward." in n}
    actor = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if ".default." in n}
    trainer.train()
    assert trainer.state.global_step == 2
    rewards = logged_values(trainer, f"rewards/{ADAPTER_NAME}/mean")
    scores = logged_values(trainer, "objective/scores")
    assert len(rewards) == 2 and len(scores) == 2
    assert all(torch.isfinite(torch.tensor(rewards + scores))) and len(set(rewards)) == 2
    after = dict(unwrapped.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())  # the reward adapter never trains
    assert any(not torch.equal(after[n], v) for n, v in actor.items())
