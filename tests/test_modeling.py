"""Model loading (full, LoRA, real bitsandbytes 4-bit on CPU) and adapter merge/export."""

from __future__ import annotations

import json

import pytest
import torch
from trl import ModelConfig

from conftest import TINY_MODEL, trl_ext_cli
from trl_ext.assets import resolve_builtin
from trl_ext.merge import merge_adapter
from trl_ext.modeling import (
    align_adapter_dtype,
    get_peft_config,
    get_quantization_config,
    load_model_and_tokenizer,
    lora_target_modules,
)


def model_args(**kw) -> ModelConfig:
    return ModelConfig(model_name_or_path=TINY_MODEL, **kw)


def batch(tokenizer):
    texts = ["The town of Velmar sits by the Ashen river.", "About 500 people live in Kelda."]
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_lora_target_presets():
    assert lora_target_modules(None) == "all-linear"
    assert lora_target_modules(["attention"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_target_modules(["mlp"]) == ["gate_proj", "up_proj", "down_proj"]
    assert lora_target_modules(["q_proj", "v_proj"]) == ["q_proj", "v_proj"]


def test_quantization_config_is_nf4_double_quant_with_cpu_compute_dtype():
    q = get_quantization_config(model_args(load_in_4bit=True, use_bnb_nested_quant=True))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32  # no GPU here: fp32 compute
    assert get_quantization_config(model_args(load_in_8bit=True)).load_in_8bit
    assert get_quantization_config(model_args()) is None


def test_configs_differ_from_trls_only_in_the_cpu_compute_dtype_and_the_target_presets():
    import trl

    args = model_args(
        load_in_4bit=True,
        use_bnb_nested_quant=True,
        dtype="bfloat16",
        use_peft=True,
        lora_r=8,
        lora_target_modules=["attention"],
    )
    ours, trls = get_quantization_config(args).to_dict(), trl.get_quantization_config(args).to_dict()
    assert (ours.pop("bnb_4bit_compute_dtype"), trls.pop("bnb_4bit_compute_dtype")) == ("float32", "bfloat16")
    assert ours == trls

    ours, trls = get_peft_config(args).to_dict(), trl.get_peft_config(args).to_dict()
    assert ours.pop("target_modules") == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert trls.pop("target_modules") == "attention"  # TRL hands the preset name to PEFT as a module regex
    assert ours == trls
    unset = model_args(use_peft=True)
    assert (get_peft_config(unset).target_modules, trl.get_peft_config(unset).target_modules) == ("all-linear", None)


def test_4bit_load_on_cpu_adapts_bnb_layers_trains_only_lora_and_gives_finite_grads():
    import bitsandbytes as bnb
    from peft import get_peft_model

    args = model_args(load_in_4bit=True, use_bnb_nested_quant=True, use_peft=True, lora_r=8)
    model, tokenizer, peft_config = load_model_and_tokenizer(args)
    assert model.is_loaded_in_4bit
    model = get_peft_model(model, peft_config)
    align_adapter_dtype(model)

    adapted = [m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(adapted) == 2 * 7  # all-linear: q, k, v, o, gate, up, down in both layers
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in adapted)
    assert all(m.base_layer.weight.dtype == torch.uint8 for m in adapted)  # packed NF4

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)

    inputs = batch(tokenizer)
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # lora_B gets a non-zero gradient at init


def test_8bit_load_on_cpu_trains_lora_and_stays_close_to_full_precision():
    import bitsandbytes as bnb
    from peft import get_peft_model

    model, tokenizer, peft_config = load_model_and_tokenizer(model_args(load_in_8bit=True, use_peft=True, lora_r=8))
    assert model.is_loaded_in_8bit
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    inputs = batch(tokenizer)
    full, _, _ = load_model_and_tokenizer(model_args())
    with torch.no_grad():
        full_loss = full(**inputs, labels=inputs["input_ids"]).loss
    model = get_peft_model(model, peft_config)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    # LLM.int8 rounding of a 2-layer model moves the loss by well under 5 %
    assert abs(loss.item() - full_loss.item()) < 0.05 * full_loss.item()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_full_precision_load_has_no_quantized_layers():
    model, tokenizer, peft_config = load_model_and_tokenizer(model_args())
    assert peft_config is None
    assert not getattr(model, "is_loaded_in_4bit", False)
    assert model.dtype == torch.float32


def _random_adapter(tmp_path, scale=0.05):
    """A LoRA adapter with non-zero B on the tiny model, saved like a training run would."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin(TINY_MODEL))
    peft_model = get_peft_model(base, get_peft_config(model_args(use_peft=True, lora_r=8)))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, scale)
    path = tmp_path / "adapter"
    peft_model.save_pretrained(path)
    return path


def _adapter_logits(adapter_path, inputs, load_in_4bit=False):
    from peft import PeftModel

    model, _, _ = load_model_and_tokenizer(model_args(load_in_4bit=load_in_4bit, use_bnb_nested_quant=True))
    model = PeftModel.from_pretrained(model, adapter_path).eval()
    with torch.no_grad():
        return model(**inputs).logits


def test_merged_fp32_model_matches_base_plus_adapter(tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = _random_adapter(tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == resolve_builtin(TINY_MODEL)

    out = merge_adapter(str(adapter), str(tmp_path / "merged"), dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = load_model_and_tokenizer(model_args())[1]
    inputs = batch(tokenizer)
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
    reference = _adapter_logits(adapter, inputs)
    # Tolerance: fp32 round-off of W + s*B@A against the unmerged two-path sum.
    torch.testing.assert_close(merged_logits, reference, atol=1e-4, rtol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


def test_merged_bf16_model_matches_within_bf16_rounding(tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = _random_adapter(tmp_path)
    out = merge_adapter(str(adapter), str(tmp_path / "merged"), dtype="bf16")
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.bfloat16
    tokenizer = load_model_and_tokenizer(model_args())[1]
    inputs = batch(tokenizer)
    with torch.no_grad():
        merged_logits = merged.float()(**inputs).logits
    reference = _adapter_logits(adapter, inputs)
    # Tolerance: bf16 has 8 mantissa bits; logits of this model are O(10), so 0.1 absolute bounds the rounding.
    torch.testing.assert_close(merged_logits, reference, atol=0.1, rtol=0.02)


def test_merge_cli_writes_a_plain_model_and_refuses_a_non_empty_output(tmp_path):
    adapter = _random_adapter(tmp_path)
    proc = trl_ext_cli("merge", str(adapter), "--output", str(tmp_path / "m"), "--dtype", "fp16", timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["dtype"] == "float16"
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError, match="not empty"):
        merge_adapter(str(adapter), str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        merge_adapter(str(tmp_path), str(tmp_path / "other"))
