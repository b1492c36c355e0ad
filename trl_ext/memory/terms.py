"""Per-term byte counts of the memory model (weights, LoRA, optimizer, activations, log-probs), in bytes.

`trl_ext.memory.estimator` composes these into components and phases; its module docstring documents the formulas.
"""

from __future__ import annotations

from dataclasses import replace

from trl_ext.memory.arch import Architecture
from trl_ext.memory.settings import MemorySettings

FUSED_TOKEN_TILE = 4096
FUSED_VOCAB_TILE = 32768


def nf4_bytes_per_param(double_quant: bool) -> float:
    """0.5 byte + absmax overhead per weight (block size 64; second-level block 256 with double quantization)."""
    return 0.5 + ((1 / 64 + 4 / (64 * 256)) if double_quant else 4 / 64)


def lora_params(arch: Architecture, s: MemorySettings) -> int:
    shapes = arch.linear_shapes()
    return arch.num_layers * sum(s.lora_r * (shapes[n][0] + shapes[n][1]) for n in s.lora_targets)


def adapted_base_params(arch: Architecture, s: MemorySettings) -> int:
    shapes = arch.linear_shapes()
    return arch.num_layers * sum(shapes[n][0] * shapes[n][1] for n in s.lora_targets)


def optimizer_bytes_per_param(optim: str, param_bytes: int = 4) -> float:
    """Optimizer state bytes per trainable parameter: torch's AdamW keeps its two moments in the parameter's dtype
    (2 x param_bytes: 4 for bf16 QLoRA adapters, 8 for fp32), bitsandbytes' 8-bit optimizers two 1-byte states."""
    optim = optim.lower()
    if "8bit" in optim:
        return 2.0
    if optim.startswith("sgd"):
        return 0.0
    if "adafactor" in optim:
        return 0.5
    return 2.0 * param_bytes


def adapter_param_bytes(s: MemorySettings) -> int:
    """Bytes per trainable parameter: TRL casts QLoRA adapters to bf16 (trl_ext aligns them to the compute dtype);
    PEFT keeps LoRA on a 16-bit base in fp32 (`autocast_adapter_dtype`); full fine-tuning trains the model's dtype."""
    if s.compute_bytes == 4:
        return 4
    if s.use_peft and s.quantization == "none":
        return 4
    return s.compute_bytes


def stream_bytes(s: MemorySettings) -> int:
    """Bytes per element of the residual stream, norm outputs and 4-bit linear outputs.

    PEFT's `prepare_model_for_kbit_training` upcasts embeddings and norm weights to fp32, so the residual stream, the
    norm outputs and (bitsandbytes casts its output to its input's dtype) the 4-bit linear outputs are fp32 under
    QLoRA, mixed precision or not. `lean_activations` keeps them in the compute dtype.
    """
    return 4 if (s.kbit_prep and not s.lean_activations) else s.compute_bytes


#: Saved bytes of one decoder layer per token, in units of the stream dtype's size, per h and per I. Calibrated on
#: CPU traces of the real stack (transformers + PEFT + bitsandbytes, SDPA, LoRA r=16 on all linears, bf16 compute,
#: fp32 stream): 28h + 13I bytes with a 4-byte stream (tiny-chat h=128/I=256 and Qwen2.5-0.5B h=896/I=4864, one
#: and two layers; benchmarks/results/memory_calibration.json).
LAYER_H_UNITS, LAYER_I_UNITS = 7.0, 3.25
#: Lean activations (16-bit stream under QLoRA) keep this fraction of the fp32-stream layer's saved bytes: the
#: per-layer slope of Qwen2.5-0.5B's architecture traced at one and two layers (DPO, LoRA r=16 on all linears, bf16)
#: is 54.1 kB per token = 0.61 x 4 x (7h + 3.25I); tiny-chat's traces agree (benchmarks/memory_calibration.py).
#: bitsandbytes' 4-bit matmul, the fp32 norm statistics and LoRA keep some tensors in fp32, so it is not 0.5.
LEAN_LAYER_FACTOR = 0.61


def activation_bytes_per_token_layer(arch: Architecture, s: MemorySettings, seq_len: int) -> float:
    """Saved tensors of one decoder layer per token, without gradient checkpointing."""
    b, sb, h = s.compute_bytes, stream_bytes(s), arch.hidden_size
    if s.kbit_prep and s.lean_activations and b < 4:
        per = LEAN_LAYER_FACTOR * 4 * (LAYER_H_UNITS * h + LAYER_I_UNITS * arch.intermediate_size)
    else:
        per = sb * (LAYER_H_UNITS * h + LAYER_I_UNITS * arch.intermediate_size)
    if s.use_peft and s.lora_dropout > 0:
        shapes = arch.linear_shapes()
        per += sum(shapes[n][0] * (sb + 1) for n in s.lora_targets)
    if s.attn_implementation == "eager":
        per += arch.num_heads * seq_len * 2 * b
    return per


#: Per-token bytes outside the decoder layers, in units of h: embedding output, final norm, the fp32 hidden states
#: the LM head keeps, their fp32 gradient (traced: 11-12h).
OUTSIDE_LAYERS_H_UNITS = 12
#: Reward models (a score head on every position, no fused LM head) peak in the backward of the top layers with
#: 14h more per token: traced 11.76 kB per token on tiny-chat at 1k-4k tokens against 9.97 kB for the causal-LM
#: methods (the dense gradient of every position's hidden state and the final norm's backward; not yet separated
#: into h and I terms). On Qwen2.5-0.5B's architecture the dequantized weights set the peak instead (0.6 % over).
REWARD_EXTRA_H_UNITS = 14


def activation_bytes(arch: Architecture, s: MemorySettings, sequences: int, seq_len: int) -> float:
    """Saved activations at the LM head's backward: every layer's (or, with checkpointing, every layer input)."""
    tokens = sequences * seq_len
    h = arch.hidden_size
    if s.gradient_checkpointing:
        # offloaded: the saved layer inputs sit in CPU memory; about two layers' inputs are on the GPU in flight
        per_token = min(arch.num_layers, 2 if s.activation_offloading else arch.num_layers) * stream_bytes(s) * h
    else:
        per_token = arch.num_layers * activation_bytes_per_token_layer(arch, s, seq_len)
    outside = OUTSIDE_LAYERS_H_UNITS + (REWARD_EXTRA_H_UNITS if s.method == "reward" else 0)
    return tokens * (per_token + outside * h)


#: Bytes per vocabulary entry per token of the EWC Fisher pass's logits (trl_ext.ewc.fisher.sequence_log_probs): the
#: compute-dtype logits (2), their fp32 log-softmax (4), and in the backward its fp32 gradient and the gradient's
#: input (4 + 4); traced 14.0 B on tiny-chat (4 x 256 tokens, bf16 compute), where the true Fisher's sampling
#: probabilities (fp32 copy + softmax) peak at the same height in the forward.
FISHER_LOGIT_BYTES = 14


def fisher_pass_bytes(arch: Architecture, s: MemorySettings) -> tuple[float, str]:
    """Working memory of the EWC Fisher pass at start: a no-checkpointing forward/backward plus its logits."""
    tokens = s.ewc_fisher_pass_tokens
    work = activation_bytes(arch, replace(s, gradient_checkpointing=False), 1, tokens)
    logits = tokens * arch.vocab_size * FISHER_LOGIT_BYTES
    return work + logits, f"forward/backward over {tokens} tokens, no checkpointing, + logits T*V*{FISHER_LOGIT_BYTES}"


def recompute_bytes(arch: Architecture, s: MemorySettings, sequences: int, seq_len: int) -> float:
    """With gradient checkpointing: one layer recomputed in backward (the LM head's buffers are freed by then)."""
    if not s.gradient_checkpointing:
        return 0.0
    return sequences * seq_len * activation_bytes_per_token_layer(arch, s, seq_len)


def no_grad_working_set(
    arch: Architecture, s: MemorySettings, tokens: int, adapters: bool = True, autocast: bool = True
) -> float:
    """Live tensors at the peak of a forward without gradients (generation's prefill, reference and old log-prob
    passes): the last layer's MLP.

    Traced on Qwen2.5-1.5B's architecture (2 and 3 layers, a 32 x 128-token prefill, bf16): four tensors of the
    residual stream's width (the embedding output the model still holds, the layer's input, the post-attention
    residual, the norm output) and four of the MLP's (the gate's activation, the up projection's base output and, with
    LoRA, a second one -- PEFT's defensive clone of a 4-bit output, or the LoRA-B output on a 16-bit base -- then the
    product). Without adapters (the reference pass) three. fp32 LoRA weights (LoRA on a 16-bit base) add an fp32 copy
    of the layer's input, and outside autocast (generation: `PeftModel.generate` calls the base model's forward, not
    the autocast-wrapped one accelerate installs) their outputs are fp32 too.
    """
    sb, h, inter = stream_bytes(s), arch.hidden_size, arch.intermediate_size
    lora = s.use_peft and adapters
    lora_bytes = adapter_param_bytes(s) if lora else sb
    stream = 4 * h * sb + (h * lora_bytes if lora_bytes > sb else 0)
    mlp = 2 * inter * sb + (2 * inter * (sb if autocast else lora_bytes) if lora else inter * sb)
    return tokens * (stream + mlp)


def logprob_bytes(arch: Architecture, s: MemorySettings, tokens: int, grad: bool) -> tuple[float, str]:
    b, h, V = s.compute_bytes, arch.hidden_size, arch.vocab_size
    if s.fused_logits:
        tile = min(tokens, FUSED_TOKEN_TILE) * FUSED_VOCAB_TILE * b  # TRL allocates a full tile, even for V < 32768
        stats = tokens * 7 * 4
        # an fp32 head (k-bit preparation's upcast; lean activations keep only an untied head fp32) is cast to the
        # compute dtype one vocabulary chunk at a time; two chunks overlap
        fp32_head = s.kbit_prep and b < 4 and (not s.lean_activations or not arch.tie_word_embeddings)
        head_cast = 2 * min(V, FUSED_VOCAB_TILE) * h * b if fp32_head else 0
        grad_hidden = tokens * h * 4 if grad else 0
        return tile + stats + head_cast + grad_hidden, (
            f"fused LM head: tile min(T,4096)x{FUSED_VOCAB_TILE}x{b} + T*7*4 stats"
            + (" + 2 head chunk casts" if head_cast else "")
            + (" + fp32 dL/dhidden T*h*4" if grad else "")
            + f", T={tokens}"
        )
    per = stream_bytes(s) + 4 + (4 if grad else 0)  # fp32 logits when the stream is fp32: 12 bytes with grad
    return tokens * V * per, f"full logits T*V*({per}) with T={tokens}, V={V}"


def base_weight_bytes(arch: Architecture, s: MemorySettings) -> tuple[float, float, str, str]:
    """(linear weights, embeddings/head/norms, formula, formula)."""
    if s.quantization in ("nf4", "fp4"):
        bpp = nf4_bytes_per_param(s.double_quant)
        lin = arch.linear_params * bpp
        lin_f = f"{arch.linear_params / 1e9:.2f}B linear params x {bpp:.4f} B ({s.quantization}" + (
            ", double quant)" if s.double_quant else ")"
        )
    elif s.quantization == "int8":
        rows = arch.num_layers * sum(o for _, o in arch.linear_shapes().values())
        lin = arch.linear_params * 1 + rows * 4
        lin_f = f"{arch.linear_params / 1e9:.2f}B linear params x 1 B + fp32 row scales"
    else:
        lin = arch.linear_params * s.compute_bytes
        lin_f = f"{arch.linear_params / 1e9:.2f}B linear params x {s.compute_bytes} B"
    other = arch.embedding_params + arch.other_params
    ob = 4 if s.kbit_prep else s.compute_bytes
    if s.kbit_prep and s.lean_activations and s.compute_bytes < 4:
        # lean activations cast the input embedding and the norm weights back to the compute dtype; biases and an
        # untied output head keep k-bit preparation's fp32 (trl_ext.modeling.lean_activations)
        h, b = arch.hidden_size, s.compute_bytes
        bias = arch.other_params - arch.num_layers * 2 * h - h
        head = 0 if arch.tie_word_embeddings else arch.vocab_size * h
        lean = arch.vocab_size * h + (arch.other_params - bias)
        other_f = f"{lean / 1e9:.3f}B embedding/norm params x {b} B + {(head + bias) / 1e9:.3f}B head/bias params x 4 B"
        return lin, lean * b + (head + bias) * 4, lin_f, other_f
    other_f = f"{other / 1e9:.3f}B params x {ob} B" + (" (fp32 upcast by k-bit prep)" if s.kbit_prep else "")
    return lin, other * ob, lin_f, other_f


def sixteen_bit_weights(arch: Architecture) -> float:
    return arch.total_params * 2.0


def completion_tokens(s: MemorySettings) -> int:
    """DPO/KTO tokens the fused LM head scores per sequence: the completion (labelled) part, taken as 3/4 of
    max_length (what `trl-ext memcheck` synthesises); TRL's fused head scores only labelled positions on a GPU."""
    return s.max_length - s.max_length // 4


def vllm_weight_bytes(arch: Architecture, s: MemorySettings) -> tuple[float, str]:
    """vLLM's own copy of the policy: TRL 1.16 starts it with bitsandbytes 4-bit when the policy is 4-bit (decoder
    linears at the policy's quantization, embeddings/head/norms in 16-bit: no k-bit upcast inside vLLM)."""
    if s.quantization in ("nf4", "fp4"):
        lin, _, _, _ = base_weight_bytes(arch, s)
        return lin + (arch.embedding_params + arch.other_params) * 2.0, "4-bit"
    return sixteen_bit_weights(arch), "16-bit"
