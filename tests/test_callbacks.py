"""The forgetting monitor: measured NLL change and KL(reference || policy) on anchor data, with any trainer."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY_MODEL


def _tiny_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_ext.assets import resolve_builtin
    from trl_ext.modeling import load_tokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin(TINY_MODEL), dtype=torch.float32)
    plain = copy.deepcopy(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return model, plain, load_tokenizer(TINY_MODEL)


def test_monitor_measures_zero_kl_at_init_and_the_exact_kl_after_a_change():
    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.data.samples import collate

    model, plain, tok = _tiny_lora()
    monitor = ForgettingMonitorCallback("builtin:general_text", num_samples=6, max_length=64, batch_size=4)
    monitor._load(tok)
    before = monitor.evaluate(model)
    assert before["forgetting/kl_to_reference"] == pytest.approx(0.0, abs=1e-7)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    after = monitor.evaluate(model)
    assert model.training  # restored

    # reference computation: plain base model vs the adapted model, token-level KL(ref || policy)
    kl, nll, tokens = 0.0, 0.0, 0.0
    with torch.no_grad():
        for b0 in range(0, 6, 4):
            ids, attn, target = collate(monitor.samples[b0 : b0 + 4], tok.pad_token_id)
            ref = torch.log_softmax(plain(input_ids=ids, attention_mask=attn).logits, -1)
            pol = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits, -1)
            kl += float(((ref.exp() * (ref - pol)).sum(-1) * target).sum())
            nll += float((-pol.gather(-1, torch.roll(ids, -1, 1)[..., None])[..., 0] * target).sum())
            tokens += float(target.sum())
    assert after["forgetting/kl_to_reference"] == pytest.approx(kl / tokens, rel=1e-4)
    assert after["forgetting/anchor_nll"] == pytest.approx(nll / tokens, rel=1e-4)
    assert after["forgetting/kl_to_reference"] > 1e-3


def test_monitor_logs_forgetting_every_n_steps_in_a_trainer_without_ewc(tmp_path):
    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.data.loading import load_dataset_by_name
    from trl_ext.trainers.dpo import DPOConfig, DPOTrainer

    model, _, tok = _tiny_lora()
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=100,
        max_length=64,
        bf16=False,
        use_cpu=True,
    )
    data = load_dataset_by_name("builtin:preferences")["train"].select(range(16))
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    monitor = ForgettingMonitorCallback("builtin:general_text", eval_steps=2, num_samples=8, max_length=64).attach(
        trainer
    )
    assert trainer.callback_handler.callbacks[1] is monitor  # before the reporting integrations
    trainer.train()
    logged = [h for h in trainer.state.log_history if "forgetting/anchor_nll_delta" in h]
    assert [h["step"] for h in logged] == [2, 4]  # logged at its own cadence although logging_steps is 100
    assert all(h["forgetting/kl_to_reference"] > 0 for h in logged)
    assert monitor.history[0]["forgetting/anchor_nll_delta"] == 0.0
    assert logged[-1]["forgetting/anchor_nll_delta"] == pytest.approx(
        logged[-1]["forgetting/anchor_nll"] - monitor.baseline_nll
    )


def test_every_trainer_attaches_the_monitor_from_its_config_without_ewc(tmp_path):
    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.data.loading import load_dataset_by_name
    from trl_ext.trainers.dpo import DPOConfig, DPOTrainer

    model, _, tok = _tiny_lora()
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        max_length=64,
        bf16=False,
        use_cpu=True,
        seed=3,
        forgetting_anchor_dataset="builtin:general_text",
        forgetting_anchor_split="train",
        forgetting_eval_steps=7,
        forgetting_eval_samples=5,
        forgetting_max_length=32,
    )
    data = load_dataset_by_name("builtin:preferences")["train"].select(range(4))
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    monitor = trainer.callback_handler.callbacks[1]
    assert isinstance(monitor, ForgettingMonitorCallback)
    assert (
        monitor.anchor_dataset,
        monitor.split,
        monitor.eval_steps,
        monitor.num_samples,
        monitor.max_length,
        monitor.seed,
    ) == ("builtin:general_text", "train", 7, 5, 32, 3)
    assert trainer.ewc_penalty is None  # ewc_lambda is 0: the monitor runs without EWC


def test_monitor_reads_exactly_the_rows_of_a_sliced_anchor_split():
    from trl_ext.callbacks import ForgettingMonitorCallback
    from trl_ext.data.loading import load_dataset_by_name
    from trl_ext.modeling import load_tokenizer

    tok = load_tokenizer(TINY_MODEL)
    test_rows = set(load_dataset_by_name("builtin:general_text")["test"].select(range(32))["text"])
    monitor = ForgettingMonitorCallback("builtin:general_text", split="test[:32]", num_samples=64, max_length=512)
    monitor._load(tok)
    assert len(monitor.samples) == 32  # not 64 rows of the train split
    assert {tok.decode(ids[mask], skip_special_tokens=True) for ids, mask in monitor.samples} == test_rows

    no_test_split = ForgettingMonitorCallback("builtin:kto", split="test[:3]", num_samples=64)
    no_test_split._load(tok)
    assert len(no_test_split.samples) == 3  # falls back to train, keeping the slice: train[:3]
