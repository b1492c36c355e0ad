"""Lean activations under QLoRA: a 16-bit residual stream trains like the fp32 one and saves activation memory."""

from __future__ import annotations

import pytest
import torch

from trl_ext.memory.trace import LiveBytesTracer
from trl_ext.modeling import COMPUTE_DTYPE_ENV, align_adapter_dtype, get_peft_config, load_model

STEPS = 5


def _qlora(tiny_model_path, fp32_activations: bool):
    from peft import get_peft_model
    from trl import ModelConfig

    args = ModelConfig(
        model_name_or_path=tiny_model_path,
        load_in_4bit=True,
        use_bnb_nested_quant=True,
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=["all-linear"],
    )
    model = load_model(args, fp32_activations=fp32_activations)
    torch.manual_seed(0)
    model = get_peft_model(model, get_peft_config(args))
    align_adapter_dtype(model)  # adapters in the compute dtype, as the trainers run them
    torch.manual_seed(1)
    for name, param in model.named_parameters():  # B = 0 at init: give B values so A's gradients are not zero
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    return model


def _batch(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 64), generator=torch.Generator().manual_seed(0))


def _run(model, ids):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses, first_grads = [], None
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if first_grads is None:
            first_grads = torch.cat([p.grad.float().flatten() for p in params])
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, first_grads


def _activation_bytes(model, ids) -> int:
    """Peak live bytes of one forward/backward of the decoder stack beyond what was live before (saved activations,
    gradients; the LM head, whose logits dominate on a 741-token vocabulary, is left out)."""
    tracer = LiveBytesTracer()
    backbone = model.get_base_model().model
    with tracer, tracer.in_phase("train"):
        before = tracer.total
        backbone(input_ids=ids).last_hidden_state.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return tracer.result()["peak_bytes"] - before


@pytest.fixture
def bf16_compute(monkeypatch):
    """On CPU the compute dtype is fp32 (and lean activations a no-op); force the GPU's bf16."""
    monkeypatch.setenv(COMPUTE_DTYPE_ENV, "bfloat16")


def test_lean_stream_is_16_bit_and_the_fp32_key_keeps_the_old_stream(tiny_model_path, bf16_compute):
    lean = _qlora(tiny_model_path, fp32_activations=False)
    old = _qlora(tiny_model_path, fp32_activations=True)
    ids = _batch(lean.config.vocab_size)
    captured = {}
    for name, model in (("lean", lean), ("fp32", old)):
        layer = model.get_base_model().model.layers[0]
        handle = layer.register_forward_hook(
            lambda m, i, o, n=name: captured.setdefault(n, o[0] if isinstance(o, tuple) else o)
        )
        with torch.no_grad():
            model(input_ids=ids)
        handle.remove()
    assert captured["lean"].dtype == torch.bfloat16 and captured["fp32"].dtype == torch.float32
    assert lean.get_base_model().model.norm.weight.dtype == torch.bfloat16


@pytest.mark.slow
def test_lean_activations_train_like_the_fp32_stream_and_save_memory(tiny_model_path, bf16_compute):
    lean = _qlora(tiny_model_path, fp32_activations=False)
    old = _qlora(tiny_model_path, fp32_activations=True)
    ids = _batch(lean.config.vocab_size)
    lean_bytes, old_bytes = _activation_bytes(lean, ids), _activation_bytes(old, ids)
    lean_losses, lean_grad = _run(lean, ids)
    old_losses, old_grad = _run(old, ids)
    # tolerance: bf16 rounding of the stream (8 bits of mantissa) over 5 AdamW steps
    assert lean_losses == pytest.approx(old_losses, rel=1e-2)
    assert lean_losses[-1] < lean_losses[0]  # it trains
    cosine = torch.nn.functional.cosine_similarity(lean_grad, old_grad, dim=0).item()
    assert cosine > 0.99
    # measured on this model's decoder stack (h=128, I=256, 2 x 64 tokens, LoRA r=8 on all linears)
    print(f"decoder activation bytes: lean {lean_bytes}, fp32 stream {old_bytes}")
    assert lean_bytes < 0.85 * old_bytes, (lean_bytes, old_bytes)  # measured 0.77 (2.39 vs 3.12 MB)


@pytest.fixture
def untied_model_path(tiny_model_path, tmp_path):
    """tiny-chat's architecture with an untied output head (as Llama-3.1-8B and Qwen2.5-7B have), random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_path)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(tmp_path)
    return str(tmp_path)


def test_an_untied_fp32_head_takes_the_16_bit_stream_outside_autocast(untied_model_path, bf16_compute):
    """The EWC Fisher pass, the forgetting monitor and generation run the model without the trainer's autocast: the
    fp32 output head must accept the bf16 stream (it failed with 'expected m1 and m2 to have the same dtype')."""
    from trl_ext.ewc.fisher import estimate_fisher

    model = _qlora(untied_model_path, fp32_activations=False)
    head = model.get_base_model().lm_head
    assert head.weight.dtype == torch.float32 and model.get_input_embeddings().weight.dtype == torch.bfloat16
    ids = _batch(model.config.vocab_size)
    samples = [(ids[i], torch.ones_like(ids[i], dtype=torch.bool)) for i in range(2)]
    fisher = estimate_fisher(model, samples, batch_size=2)
    assert fisher.tensors and all(torch.isfinite(t).all() and t.sum() > 0 for t in fisher.tensors.values())
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # under autocast (the trainers' step) the head still runs in bf16, as before
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
    # last: after an inference pass bitsandbytes repacks 4-bit weights for CPU inference only
    out = model.generate(input_ids=ids[:1, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)
