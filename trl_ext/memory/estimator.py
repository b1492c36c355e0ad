"""Analytic peak-memory model of one training process, component by component.

Every number is in bytes. `b` is the compute dtype's size (2 for bf16/fp16), `h` the hidden size, `I` the MLP
intermediate size, `q = heads * head_dim`, `kv = kv_heads * head_dim`, `L` layers, `V` vocabulary, `B` the
per-device micro-batch, `T` tokens in a micro-batch. Components belong to a *phase*: `static` ones live for the
whole run, the others only while their phase runs. The peak is

    peak = sum(static) + max over phases (train, generation, scoring, precompute, fisher) of sum(phase)
           + allocator slack (5 % of what the PyTorch allocator holds).

The formulas (each component's `formula` repeats its own):

- 4-bit NF4 base weights (decoder linears only; bitsandbytes keeps embeddings and the LM head in 16-bit):
  0.5 byte/param + absmax per 64-weight block: fp32 (4/64 byte/param) or, with double quantization, 8-bit
  (1/64) plus one fp32 second-level constant per 256 blocks (4/(64*256)). 8-bit: 1 byte/param + fp32 row scales.
- Embeddings, LM head (when untied), norms and biases: 16-bit, upcast to fp32 by PEFT's
  `prepare_model_for_kbit_training` (which trl-ext runs on every quantized base); lean activations (the default)
  cast the input embedding and the norms back to the compute dtype, an untied head and the biases stay fp32.
- LoRA: r * (in + out) per adapted linear per layer; weights, gradients and AdamW's two states in the adapters'
  dtype (QLoRA: the compute dtype, as TRL casts them; LoRA on a 16-bit base: fp32, PEFT's autocast), bitsandbytes
  8-bit optimizers 2 byte/param; paged optimizers are counted in full. The peak is at the top of the backward pass
  (the LM head, or the top layer's recompute under checkpointing), before any adapter gradient exists: adapter
  gradients count only in the optimizer step (phase `optimizer`), or throughout with gradient accumulation (an
  earlier micro-batch's gradients are alive in the next one's backward); full fine-tuning's count throughout.
- Activations per token per layer without gradient checkpointing (SDPA/flash attention, no T^2 term):
  fp32 RMSNorm inputs 2*4h, and in b bytes: norm outputs 2h, q/rotated q/attention output 3q, k/v/rotated k 3kv,
  gate/up/SiLU/product 4I; LoRA dropout (p > 0) keeps a copy plus mask of each adapted input (in*(b+1)).
  Calibrated on CPU traces: 4 x (7h + 3.25I) bytes with k-bit preparation's fp32 stream, 0.61 of that with lean
  activations (Qwen2.5-0.5B's traced per-layer slope, 54.0 kB per token), plus 12h per token outside the layers.
  With gradient checkpointing only each layer's input (b*h) is kept, plus one layer recomputed in backward.
  Eager attention adds heads*S*(2b) per token per layer (scores and probabilities).
- A layer's backward (its recompute under checkpointing, and under 4-bit the three largest linears dequantized to
  b bytes: traced as a constant on Qwen2.5-0.5B) never coexists with the LM head's buffers: only what it needs
  beyond them is counted.
- Log-probabilities: TRL >= 1.16 runs a fused LM head (tiles of 4096 tokens x 32768 vocabulary in b bytes, seven
  fp32 statistics per token, an fp32 gradient of the hidden states T*h*4, and the b-byte cast of one fp32 head tile);
  otherwise the full logits T*V*(b + 4 + 4): the logits, an fp32 log-softmax and its fp32 gradient.
  Scored tokens (on a GPU the fused head scores labelled positions only): DPO 2*B*C, KTO B*C with C = 3/4 of
  max_length taken as completion, SFT B*C with a completion/assistant-only loss (else B*max_length), reward none
  (a score head), GRPO/PPO B*max_completion_length.
- Reference pass (no grad, adapters disabled; DPO/KTO run it while the policy graph is alive, so it adds to the
  training phase): the larger of the last layer's working set T*b*(4h+3I) (`terms.no_grad_working_set`) and its
  log-prob buffers (they never coexist), beyond the LM head's backward buffers. None with precompute_ref_log_probs
  (then it runs once before training, as its own phase).
- Generation with HF generate: KV cache 2*L*kv*b per token for generation_batch_size*(prompt+completion) tokens,
  and the larger of the prefill's last-layer working set (T*b*(4h+4I) with LoRA, its fp32 parts outside autocast)
  and the fp32 sampling logits (3*V*4 per sequence): the prefill's tensors are freed before the first logits.
- vLLM colocate: vLLM takes gpu_memory_utilization x the GPU's total memory, for its own copy of the weights (4-bit
  when the policy is 4-bit, as TRL 1.16 starts it; else 16-bit),
  activations and its KV cache; with sleep mode it holds that only while generating.
- PPO: a critic adapter + value head (only the head with `critic: shared`; a second base with `critic: model`)
  (weights, optimizer, gradients as the policy's) on the same 4-bit base, and the critic's own activations in the
  update; the reference is the base with adapters off (free). A separate reward model: a 16-bit copy of its arch.
- EWC (full): a diagonal Fisher for every base weight of the adapted modules in ewc_fisher_dtype (4 or 2 B), plus
  the penalty's fp32 row chunks of s*B*A - delta, its square and gradient (at most 16 MiB each, as
  trl_ext.ewc.penalty chunks them); kfac: two vectors per module, (out + in) x dtype; lora_params: fp32 Fisher +
  anchor per adapter parameter. When the Fisher is estimated at start (ewc_fisher_dataset, no ewc_fisher_path) its
  pass is a phase of its own: two fp32 accumulators (even/odd halves, for the split-half agreement) of the stored
  size, plus a no-checkpointing forward/backward over ewc_fisher_batch_size x ewc_fisher_max_length tokens and
  its logits (terms.FISHER_LOGIT_BYTES per vocabulary entry per token).
- Fixed: CUDA context, cuBLAS workspaces and kernels, 0.5 GiB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from trl_ext.configs.ewc import fisher_tensor_shapes
from trl_ext.memory.arch import Architecture
from trl_ext.memory.settings import MemorySettings
from trl_ext.memory.terms import (
    activation_bytes,
    adapter_param_bytes,
    base_weight_bytes,
    completion_tokens,
    fisher_pass_bytes,
    logprob_bytes,
    lora_params,
    no_grad_working_set,
    optimizer_bytes_per_param,
    recompute_bytes,
    sixteen_bit_weights,
    stream_bytes,
    vllm_weight_bytes,  # noqa: F401  (re-exported: tests and callers use them from here)
)

GiB = 1024**3
CUDA_CONTEXT_BYTES = int(0.5 * GiB)
ALLOCATOR_SLACK = 0.05
PHASES = ("train", "generation", "scoring", "precompute", "fisher", "optimizer")
#: float32 elements per row chunk of the EWC penalty (trl_ext.ewc.penalty.CHUNK_ELEMENTS: 16 MiB).
PENALTY_CHUNK_ELEMENTS = 1 << 22


@dataclass
class Component:
    name: str
    bytes: float
    phase: str  # static | train | generation | scoring | precompute | fixed
    formula: str

    @property
    def gib(self) -> float:
        return self.bytes / GiB


@dataclass
class MemoryEstimate:
    """Components, the predicted peak and the verdict against `gpu_bytes`."""

    settings: MemorySettings
    architecture: Architecture
    gpu_bytes: float
    components: list[Component]
    peak_phase: str
    peak_bytes: float
    problems: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    reward_architecture: Architecture | None = None
    allocated_bytes: float = 0.0  # tensors only (comparable to a trace or max_memory_allocated); peak_bytes adds CUDA

    @property
    def allocated_gib(self) -> float:
        return self.allocated_bytes / GiB

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    @property
    def fits(self) -> bool:
        return not self.problems and self.peak_bytes <= self.gpu_bytes

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no component {name!r}; components: {', '.join(c.name for c in self.components)}")

    def phase_allocated_bytes(self, phase: str) -> float:
        """Allocated bytes while `phase` runs: the static terms plus the phase's own (comparable to its trace)."""
        return sum(c.bytes for c in self.components if c.phase in ("static", phase))

    def biggest(self, n: int = 3) -> list[Component]:
        """The largest components that count towards the peak."""
        counted = [c for c in self.components if c.phase in ("static", "fixed", self.peak_phase)]
        return sorted(counted, key=lambda c: -c.bytes)[:n]


# --------------------------------------------------------------------------------------------------------------


def _static(arch, s, gpu_bytes, reward_arch, problems) -> list[Component]:
    comps: list[Component] = []
    lin, other, lin_f, other_f = base_weight_bytes(arch, s)
    comps.append(Component("base weights", lin, "static", lin_f))
    comps.append(Component("embeddings, lm_head, norms", other, "static", other_f))
    pb = adapter_param_bytes(s)
    ob = optimizer_bytes_per_param(s.optim, pb)
    trainable = lora_params(arch, s) if s.use_peft else arch.total_params
    what = f"LoRA r={s.lora_r} on {len(s.lora_targets)} modules" if s.use_peft else "all parameters"
    if s.use_peft:  # traced: the peak is at the top of the backward pass, before any adapter gradient exists, unless
        # gradient accumulation keeps an earlier micro-batch's alive (Qwen2.5-7B DPO, 2 micro-batches per step)
        n, acc = f"{trainable / 1e6:.1f}M", s.grad_accum > 1
        comps.append(Component("adapter weights", trainable * pb, "static", f"{n} ({what}) x {pb} B"))
        what = f"{n} x {pb} B" + (", accumulated" if acc else "")
        comps.append(Component("gradients", trainable * pb, "static" if acc else "optimizer", what))
    else:  # full fine-tuning: the gradients are as big as the model; counted throughout
        comps.append(Component("gradients", trainable * pb, "static", f"{trainable / 1e6:.1f}M x {pb} B"))
    comps.append(
        Component("optimizer states", trainable * ob, "static", f"{trainable / 1e6:.1f}M x {ob:g} B ({s.optim})")
    )
    if s.method == "ppo":
        head = arch.hidden_size * (4 + 4 + 8)
        grad_b = 0 if s.use_peft else pb  # traced: no critic adapter gradient at the peak
        if s.critic_mode == "model":
            clin, cother, _, _ = base_weight_bytes(arch, s)
            comps.append(
                Component(
                    "critic model (separate base)", clin + cother, "static", "a second quantized base for the critic"
                )
            )
        ctrain = 0 if s.critic_mode == "shared" else (lora_params(arch, s) if s.use_peft else arch.total_params)
        comps.append(
            Component(
                "critic adapter + value head",
                ctrain * (pb + grad_b + ob) + head,
                "static",
                f"{ctrain / 1e6:.1f}M x ({pb}+{grad_b}+{ob:g}) B + value head h*(4+4+8)",
            )
        )
    needs_ref = (s.method in ("dpo", "kto") and not s.precompute_ref) or (s.method in ("grpo", "ppo") and s.beta > 0)
    if needs_ref and s.use_peft and s.sft_adapter:
        ref_params = lora_params(arch, s)
        comps.append(
            Component(
                "reference adapter (frozen SFT copy)",
                ref_params * pb,
                "static",
                f"{ref_params / 1e6:.1f}M x {pb} B, no gradient or optimizer state",
            )
        )
    if needs_ref and not s.use_peft:
        comps.append(
            Component(
                "reference model copy",
                sixteen_bit_weights(arch),
                "static",
                "full fine-tuning keeps a 16-bit reference copy: params x 2 B",
            )
        )
    if s.reward_model:
        if reward_arch is not None:
            comps.append(
                Component(
                    "reward model",
                    sixteen_bit_weights(reward_arch),
                    "static",
                    f"{reward_arch.total_params / 1e9:.2f}B params x 2 B (sequence classifier)",
                )
            )
        else:
            problems.append(
                f"reward model {s.reward_model!r} has no config.json offline; its weights are not counted "
                "(download its config.json or use a bundled architecture)."
            )
    if s.ewc_lambda > 0:
        shapes = arch.linear_shapes()
        fisher_elements = arch.num_layers * sum(
            math.prod(shape)
            for target in s.lora_targets
            for shape in fisher_tensor_shapes(s.ewc_fisher_mode, *shapes[target][::-1], rank=s.lora_r).values()
        )
        label, per_element, what = {
            "full": ("EWC Fisher (full weight space)", s.ewc_fisher_bytes, "adapted base params (diagonal)"),
            "kfac": ("EWC Fisher (K-FAC)", s.ewc_fisher_bytes, "= sum (out + in) per module (two vectors)"),
            "lora_params": ("EWC Fisher (LoRA params)", 8, "adapter params x (4 Fisher + 4 anchor)"),
        }[s.ewc_fisher_mode]
        comps.append(
            Component(
                label, fisher_elements * per_element, "static", f"{fisher_elements / 1e6:.2f}M {what} x {per_element} B"
            )
        )
        n = fisher_elements
        if s.ewc_fisher_pass_tokens:
            work, what = fisher_pass_bytes(arch, s)
            what = f"2 fp32 accumulators (split halves) x {n / 1e6:.1f}M + {what}, once at start"
            comps.append(Component("EWC Fisher pass", 2 * n * 4 + work, "fisher", what))
    if s.method in ("grpo", "ppo") and s.use_vllm and s.vllm_mode == "colocate":
        reserved = s.vllm_gpu_memory_utilization * gpu_bytes
        weights, kind = vllm_weight_bytes(arch, s)
        kv_seq = 2 * arch.num_layers * arch.kv_dim * 2 * (s.prompt_length + s.completion_length)
        if weights + 1 * GiB + kv_seq > reserved:
            problems.append(
                f"vLLM colocate gets vllm_gpu_memory_utilization {s.vllm_gpu_memory_utilization:g} x "
                f"{gpu_bytes / GiB:.1f} GiB = {reserved / GiB:.1f} GiB, less than its {kind} weights "
                f"({weights / GiB:.1f} GiB) + ~1 GiB activations + one sequence of KV cache: raise the utilization, "
                "use vllm_mode: server on another GPU, or generate with use_vllm: false."
            )
        comps.append(
            Component(
                "vLLM colocate (own weights + KV cache)",
                reserved,
                "generation" if s.vllm_sleep else "static",
                f"gpu_memory_utilization {s.vllm_gpu_memory_utilization:g} x GPU; {kind} weights "
                f"{weights / GiB:.1f} GiB inside" + ("; released while training (sleep mode)" if s.vllm_sleep else ""),
            )
        )
    comps.append(Component("CUDA context + kernels", CUDA_CONTEXT_BYTES, "fixed", "fixed 0.5 GiB"))
    return comps


def _dynamic(arch: Architecture, s: MemorySettings) -> list[Component]:
    comps: list[Component] = []
    B = s.batch_size
    if s.method == "dpo":
        seqs, seq_len, scored = 2 * B, s.max_length, 2 * B * completion_tokens(s)
        shape = f"2 x {B} sequences (chosen+rejected concatenated) x {seq_len} tokens"
    elif s.method == "kto":
        seqs, seq_len, scored = B, s.max_length, B * completion_tokens(s)
        shape = f"{B} sequences x {seq_len} tokens"
    elif s.method == "sft":  # the fused head scores labelled positions only (on a GPU): every one, or completions
        seqs, seq_len = B, s.max_length
        scored = B * (completion_tokens(s) if s.sft_completion_only else s.max_length)
        shape = f"{B} sequences x {seq_len} tokens"
    elif s.method == "reward":  # a score head on the last token: no vocabulary-sized logits
        seqs, seq_len, scored = 2 * B, s.max_length, 0
        shape = f"2 x {B} sequences (chosen+rejected concatenated) x {seq_len} tokens"
    else:
        seqs, seq_len, scored = B, s.prompt_length + s.completion_length, B * s.completion_length
        shape = f"{B} sequences x ({s.prompt_length} prompt + {s.completion_length} completion) tokens"
    ckpt = "with" if s.gradient_checkpointing else "without"
    act = activation_bytes(arch, s, seqs, seq_len)
    comps.append(Component("activations", act, "train", f"{shape}, {ckpt} gradient checkpointing"))
    if scored:
        lp, lp_f = logprob_bytes(arch, s, scored, grad=True)
        comps.append(Component("logits / log-probs", lp, "train", lp_f))
    else:
        lp = 0
    # a layer's backward (see the module docstring) never coexists with the LM head's buffers: count what exceeds them
    shapes = arch.linear_shapes()
    dequant = 3 * max(i * o for i, o in shapes.values()) * s.compute_bytes if s.quantization != "none" else 0
    layer = recompute_bytes(arch, s, seqs, seq_len) + dequant
    if layer - lp > 0:
        comps.append(
            Component(
                "layer backward (recompute, dequantized weights)",
                layer - lp,
                "train",
                ("one layer's saved tensors rebuilt + " if s.gradient_checkpointing else "")
                + ("3 largest linears dequantized to 16-bit, " if dequant else "")
                + "beyond the LM head's buffers freed before it",
            )
        )
    if s.method == "ppo" and s.critic_mode != "shared":
        critic = max(0.0, act - lp)  # traced: the critic's pass never coexists with the LM head's buffers
        comps.append(
            Component(
                "critic activations", critic, "train", "critic forward/backward on the same tokens, beyond LM head"
            )
        )
    ref_tokens = seqs * seq_len
    ref_scored = scored
    # a no-grad forward holds one layer's working set, then the LM head's tile: never both
    ref_ws = no_grad_working_set(arch, s, ref_tokens, adapters=False)
    ref_alone = max(ref_ws, logprob_bytes(arch, s, ref_scored, grad=False)[0])
    # while the policy graph is alive the reference pass reuses the room of the LM head's backward buffers (the
    # head's tile and gradients exist only after it has finished): count only what it needs beyond them
    ref = max(0.0, ref_alone - lp) if s.method in ("dpo", "kto") and not s.precompute_ref else ref_alone
    ref_f = f"no-grad forward over {ref_tokens} tokens (adapters disabled)"
    if s.method in ("dpo", "kto"):
        if s.precompute_ref:
            comps.append(Component("reference pass", ref, "precompute", ref_f + ", once before training"))
        else:
            comps.append(
                Component("reference pass", ref, "train", ref_f + ", while the policy graph is alive (beyond LM head)")
            )
    if s.ewc_lambda > 0 and s.ewc_fisher_mode in ("full", "kfac"):
        biggest = max(i * o for n, (i, o) in shapes.items() if n in s.lora_targets)
        chunk = min(biggest, PENALTY_CHUNK_ELEMENTS) * 4
        comps.append(
            Component(
                "EWC penalty buffers",
                chunk * 3,
                "train",
                "one fp32 row chunk (<= 16 MiB) of s*B*A - delta, its square and gradient",
            )
        )
    if s.method in ("grpo", "ppo"):
        G = s.generation_batch_size
        total_len = s.prompt_length + s.completion_length
        rollout = G * total_len * 8 * 2 + G * s.completion_length * 4 * 6
        comps.append(
            Component(
                "rollout buffers",
                rollout,
                "static",
                f"{G} completions: ids/masks int64, per-token log-probs/advantages fp32",
            )
        )
        if not (s.use_vllm and s.vllm_mode in ("colocate", "server")):
            kv = 2 * arch.num_layers * arch.kv_dim * stream_bytes(s) * G * total_len
            comps.append(
                Component(
                    "generation KV cache",
                    kv,
                    "generation",
                    f"2*L*kv*{stream_bytes(s)} B x {G} sequences x {total_len} tokens (HF generate)",
                )
            )
            # the prefill's last layer (outside autocast when PEFT generates), freed before the sampling logits exist
            prefill = no_grad_working_set(arch, s, G * s.prompt_length, autocast=not s.use_peft)
            gen = max(prefill, G * arch.vocab_size * 4 * 3)
            f = f"larger of the prefill of {G}x{s.prompt_length} tokens and fp32 sampling logits x3"
            comps.append(Component("generation prefill or sampling", gen, "generation", f))
        if s.beta > 0:
            comps.append(Component("reference pass", ref, "scoring", ref_f + ", per micro-batch after generation"))
        else:
            lp_old = max(no_grad_working_set(arch, s, ref_tokens), logprob_bytes(arch, s, ref_scored, grad=False)[0])
            comps.append(Component("old log-prob pass", lp_old, "scoring", "no-grad policy forward per micro-batch"))
    return comps


def estimate_settings(
    arch: Architecture, s: MemorySettings, gpu_bytes: float, reward_arch: Architecture | None = None
) -> MemoryEstimate:
    """The estimate for explicit settings (what `trl_ext.memory.estimate_memory` calls after reading a recipe)."""
    problems: list[str] = []
    comps = _static(arch, s, gpu_bytes, reward_arch, problems) + _dynamic(arch, s)
    static = sum(c.bytes for c in comps if c.phase == "static")
    fixed = sum(c.bytes for c in comps if c.phase == "fixed")
    vllm = sum(c.bytes for c in comps if c.name.startswith("vLLM") and c.phase == "static")
    per_phase = {p: sum(c.bytes for c in comps if c.phase == p) for p in PHASES}
    peak_phase = max(per_phase, key=per_phase.get)
    allocator = static - vllm + per_phase[peak_phase]
    slack = ALLOCATOR_SLACK * allocator
    comps.append(Component("allocator fragmentation", slack, "fixed", f"{ALLOCATOR_SLACK:.0%} of PyTorch-held memory"))
    peak = static + fixed + slack + per_phase[peak_phase]
    return MemoryEstimate(
        settings=s,
        architecture=arch,
        gpu_bytes=gpu_bytes,
        components=comps,
        peak_phase=peak_phase,
        peak_bytes=peak,
        problems=problems,
        reward_architecture=reward_arch,
        allocated_bytes=static + per_phase[peak_phase],
    )


def with_settings(est: MemoryEstimate, **changes) -> MemoryEstimate:
    """Re-estimate with some settings changed (used for suggestions and monotonicity)."""
    return estimate_settings(est.architecture, replace(est.settings, **changes), est.gpu_bytes, est.reward_architecture)
