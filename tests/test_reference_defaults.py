"""A run that starts from `sft_adapter_path` measures against that SFT policy everywhere, not the base it was trained
from: EWC anchors at it (and estimates its Fisher there) unless `ewc_anchor_adapter` says otherwise, and the
forgetting monitor's `forgetting/kl_to_reference` is measured against the frozen `ref` adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_reference import DPO, _random_adapter

from trl_ext.recipe import load_recipe


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory) -> Path:
    return _random_adapter(tmp_path_factory.mktemp("sft") / "sft", "CAUSAL_LM", seed=3)


def _dpo(sft_adapter: Path, out: Path, *extra: str):
    from trl_ext.train import build_trainer

    overrides = ["--sft_adapter_path", str(sft_adapter), "--output_dir", str(out), "--max_steps", "1", *extra]
    return build_trainer(load_recipe(DPO, overrides))


EWC = ["--ewc_lambda", "10", "--ewc_fisher_samples", "8", "--ewc_fisher_max_length", "64"]


@pytest.mark.slow
def test_ewc_from_an_sft_adapter_anchors_at_it_by_default_and_the_base_anchor_would_not_be_zero(sft_adapter, tmp_path):
    from trl_ext.ewc.penalty import EWCPenalty

    trainer = _dpo(sft_adapter, tmp_path / "dpo", *EWC)
    penalty, predicted_kl, _ = trainer.ewc_penalty.value_and_grads()
    assert float(penalty) == 0.0 and float(predicted_kl) == 0.0  # the policy starts at its anchor, the SFT policy

    # the same Fisher anchored at the base (what the run did before): the SFT policy is far from it
    base_anchor = EWCPenalty(trainer.ewc_penalty.modules, trainer.ewc_fisher.tensors, 10.0, mode="full")
    assert float(base_anchor.value_and_grads()[0]) > 1e-4


@pytest.mark.slow
def test_forgetting_kl_is_measured_against_the_frozen_sft_reference_not_the_base(sft_adapter, tmp_path):
    from trl_ext.callbacks import ForgettingMonitorCallback

    trainer = _dpo(
        sft_adapter,
        tmp_path / "dpo",
        "--forgetting_anchor_dataset",
        "builtin:general_text",
        "--forgetting_eval_samples",
        "8",
        "--forgetting_max_length",
        "64",
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert "ref" in model.peft_config and model.active_adapter == "default"
    monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ForgettingMonitorCallback))
    monitor._load(trainer.processing_class)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    at_start = monitor.evaluate(trainer.model)["forgetting/kl_to_reference"]
    assert abs(at_start) < 1e-6  # the policy is the SFT adapter, exactly its frozen copy
    assert model.active_adapter == "default"  # measuring put the policy's adapter back ...
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # ... and its trainable flags

    monitor.reference_adapter = None  # what it measured before: the base with adapters off
    assert monitor.evaluate(trainer.model)["forgetting/kl_to_reference"] > 1e-3

    with torch.no_grad():  # a policy that moved away from the SFT policy is measured as having moved
        for name, param in model.named_parameters():
            if ".default." in name and "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))
    monitor.reference_adapter = "ref"
    assert monitor.evaluate(trainer.model)["forgetting/kl_to_reference"] > 1e-4
