"""The recipe settings that decide peak memory, gathered into one flat, replaceable dataclass.

`settings_from_recipe` reads them from a validated `trl_ext.recipe.Recipe`; the estimator only sees
`MemorySettings`, so suggestions ("half the micro-batch") are a `dataclasses.replace` away. Extension fields
of other trl-ext methods (PPO's critic, EWC) are read with `getattr` so recipes without them work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl_ext.memory.arch import LINEAR_NAMES

#: Prompt length assumed for GRPO/PPO when nothing in the recipe bounds it (TRL's GRPOConfig has no prompt limit).
DEFAULT_PROMPT_LENGTH = 512


@dataclass(frozen=True)
class MemorySettings:
    method: str
    model: str
    quantization: str = "nf4"  # nf4 | fp4 | int8 | none
    double_quant: bool = True
    kbit_prep: bool = True  # PEFT's prepare_model_for_kbit_training upcasts 16-bit params to fp32
    lean_activations: bool = True  # residual stream / norm / 4-bit outputs in the compute dtype despite k-bit prep
    compute_bytes: int = 2  # bf16/fp16 compute on a GPU; 4 for fp32
    use_peft: bool = True
    lora_r: int = 16
    lora_targets: tuple[str, ...] = LINEAR_NAMES
    lora_dropout: float = 0.0
    optim: str = "adamw_torch_fused"
    gradient_checkpointing: bool = True
    activation_offloading: bool = False  # TRL's activation_offloading: saved layer inputs live in CPU memory
    attn_implementation: str = "sdpa"
    batch_size: int = 1  # per_device_train_batch_size
    grad_accum: int = 1
    max_length: int = 1024  # DPO/KTO/SFT/reward: prompt + completion
    prompt_length: int = DEFAULT_PROMPT_LENGTH  # GRPO/PPO
    prompt_length_assumed: bool = True
    completion_length: int = 256  # GRPO/PPO max_completion_length
    num_generations: int = 8
    generation_batch_size: int = 8  # per device, completions generated at once
    precompute_ref: bool = False
    beta: float = 0.1
    fused_logits: bool = True  # TRL's fused LM head: log-probs in tiles, no (tokens, vocab) logits tensor
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_sleep: bool = False
    kto_kl: bool = True  # KTO's mismatched-pair KL term (loss_type kto)
    sft_completion_only: bool = False  # SFT loss on completions/assistant turns only: the fused head skips the rest
    # PPO
    critic_mode: str = (
        "adapter"  # adapter (own LoRA + value head, same base) | shared (value head on the actor) | model
    )
    reward_model: str | None = None
    reward_adapter: bool = False
    sft_adapter: bool = False  # the policy starts from an SFT adapter; a frozen copy of it is the reference
    # EWC
    ewc_lambda: float = 0.0
    ewc_fisher_mode: str = "full"
    ewc_fisher_bytes: int = 4  # storage dtype of the Fisher (ewc_fisher_dtype): 4 fp32, 2 bf16
    ewc_fisher_pass_tokens: int = 0  # tokens per Fisher micro-batch when it is estimated at start (0: loaded from file)
    notes: tuple[str, ...] = field(default_factory=tuple)


def _expand_targets(targets) -> tuple[str, ...]:
    from trl_ext.modeling import lora_target_modules

    expanded = lora_target_modules(targets)
    if expanded == "all-linear":
        return LINEAR_NAMES
    names = tuple(t for t in expanded if t in LINEAR_NAMES)
    return names or LINEAR_NAMES


def _compute_bytes(recipe) -> int:
    """2 when the run computes in 16-bit on its GPU (bf16/fp16 mixed precision, TRL's default), else 4. Read from the
    recipe as loaded: on a CPU-only machine the run turns bf16/fp16 off, but the estimate is for the GPU."""
    t = recipe.training
    return 2 if (getattr(t, "bf16", False) or getattr(t, "fp16", False)) else 4


def settings_from_recipe(recipe, prompt_length: int | None = None, full_logits: bool | None = None) -> MemorySettings:
    """Everything memory depends on, read from a parsed recipe. `prompt_length`/`full_logits` override."""
    t, m, method = recipe.training, recipe.model, recipe.method
    notes: list[str] = []
    quant = "none"
    if m.load_in_4bit:
        quant = str(getattr(m, "bnb_4bit_quant_type", "nf4") or "nf4")
    elif m.load_in_8bit:
        quant = "int8"
    batch = int(t.per_device_train_batch_size)
    grad_accum = int(t.gradient_accumulation_steps)

    completion = int(getattr(t, "max_completion_length", None) or 256)
    prompt_assumed = False
    if prompt_length is None:
        prompt_length = getattr(t, "max_prompt_length", None)
        vllm_len = getattr(t, "vllm_max_model_length", None)
        if prompt_length is None and vllm_len:
            prompt_length = max(int(vllm_len) - completion, 1)
        if prompt_length is None:
            prompt_length = DEFAULT_PROMPT_LENGTH
            prompt_assumed = method in ("grpo", "ppo")
    num_generations = int(getattr(t, "num_generations", 1) or 1)
    gen_batch = getattr(t, "generation_batch_size", None)
    if gen_batch is None:
        steps = getattr(t, "steps_per_generation", None) or grad_accum
        gen_batch = batch * steps
    if method in ("grpo", "ppo"):
        # TRL sets generation_batch_size for all processes; per device it is divided by the world size, which the
        # estimate takes as 1 (one GPU). Under DDP each GPU generates generation_batch_size / num_processes.
        if prompt_assumed:
            notes.append(f"prompt length assumed {prompt_length} tokens (TRL does not bound it; pass --prompt-length)")

    if full_logits is None:
        try:
            from trl.trainer.utils import add_fused_lm_head  # noqa: F401  (TRL >= 1.16 fuses the LM head)

            full_logits = False
        except ImportError:
            full_logits = True

    critic_mode = str(getattr(t, "critic", None) or getattr(t, "critic_mode", None) or "adapter")
    beta = float(getattr(t, "beta", 0.0) or 0.0)
    if method == "ppo":  # PPO puts the KL into the reward: a reference pass whenever kl_coef > 0
        beta = max(beta, float(getattr(t, "kl_coef", 0.0) or 0.0))
    return MemorySettings(
        method=method,
        model=str(m.model_name_or_path),
        quantization=quant,
        double_quant=bool(getattr(m, "use_bnb_nested_quant", False)),
        kbit_prep=quant != "none",  # trl_ext.modeling.load_model always runs k-bit preparation on quantized bases
        lean_activations=not bool(getattr(recipe.script, "kbit_fp32_activations", False)),
        compute_bytes=_compute_bytes(recipe),
        use_peft=bool(m.use_peft),
        lora_r=int(m.lora_r or 16),
        lora_targets=_expand_targets(m.lora_target_modules),
        # TRL's DPO, KTO, GRPO, reward (and trl-ext's PPO) set every dropout to 0 (`disable_dropout`, on by default):
        # their LoRA dropout keeps no copy (traced: the same bytes with lora_dropout 0 and 0.05)
        lora_dropout=0.0 if getattr(t, "disable_dropout", False) else float(m.lora_dropout or 0.0),
        optim=str(getattr(t.optim, "value", t.optim)),
        gradient_checkpointing=bool(t.gradient_checkpointing),
        activation_offloading=bool(getattr(t, "activation_offloading", False)),
        attn_implementation=str(m.attn_implementation or "sdpa"),
        batch_size=batch,
        grad_accum=grad_accum,
        max_length=int(getattr(t, "max_length", None) or 1024),
        prompt_length=int(prompt_length),
        prompt_length_assumed=prompt_assumed,
        completion_length=completion,
        num_generations=num_generations,
        generation_batch_size=int(gen_batch),
        precompute_ref=bool(getattr(t, "precompute_ref_log_probs", False)),
        beta=beta,
        fused_logits=not full_logits,
        use_vllm=bool(getattr(t, "use_vllm", False)),
        vllm_mode=str(getattr(t, "vllm_mode", "colocate") or "colocate"),
        vllm_gpu_memory_utilization=float(getattr(t, "vllm_gpu_memory_utilization", 0.3) or 0.3),
        vllm_sleep=bool(getattr(t, "vllm_enable_sleep_mode", False)),
        kto_kl=str(getattr(t, "loss_type", "kto")) == "kto",
        sft_completion_only=bool(getattr(t, "assistant_only_loss", False) or getattr(t, "completion_only_loss", None)),
        critic_mode=critic_mode if critic_mode in ("adapter", "shared", "model") else "adapter",
        reward_model=recipe.script.reward_model_name_or_path,
        reward_adapter=bool(getattr(t, "reward_adapter_path", None) or getattr(t, "reward_adapter", None)),
        sft_adapter=bool(getattr(t, "sft_adapter_path", None)),
        ewc_lambda=float(getattr(t, "ewc_lambda", 0.0) or 0.0),
        ewc_fisher_mode=str(getattr(t, "ewc_fisher_mode", "full") or "full"),
        ewc_fisher_bytes=2 if str(getattr(t, "ewc_fisher_dtype", "float32")) in ("bfloat16", "float16") else 4,
        ewc_fisher_pass_tokens=(
            int(getattr(t, "ewc_fisher_batch_size", 8)) * int(getattr(t, "ewc_fisher_max_length", 512))
            if getattr(t, "ewc_fisher_dataset", None) and not getattr(t, "ewc_fisher_path", None)
            else 0
        ),
        notes=tuple(notes),
    )
