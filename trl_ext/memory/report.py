"""What an estimate says: the verdict, re-estimated suggestions, the text and JSON renderings, the refusal message."""

from __future__ import annotations

from trl_ext.memory.estimator import GiB, MemoryEstimate, with_settings

#: What the preset library aims for on a 24 GB card (L4/A10G expose about 22 GiB).
PRESET_TARGET_GIB = 20.0


def _round_len(n: int) -> int:
    return max(64, int(n) // 64 * 64)


def suggest(est: MemoryEstimate) -> list[str]:
    """Concrete recipe changes, each re-estimated, best first. Empty when the estimate fits."""
    s = est.settings
    tries: list[tuple[str, dict]] = []
    if not s.gradient_checkpointing:
        tries.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if s.batch_size > 1:
        b = max(1, s.batch_size // 2)
        ga = s.grad_accum * s.batch_size // b
        tries.append(
            (
                f"per_device_train_batch_size: {b}, gradient_accumulation_steps: {ga} (same effective batch)",
                {"batch_size": b, "grad_accum": ga},
            )
        )
    if s.method in ("dpo", "kto", "sft", "reward"):
        if s.method in ("dpo", "kto") and not s.precompute_ref:
            tries.append(("precompute_ref_log_probs: true", {"precompute_ref": True}))
        n = _round_len(s.max_length * 3 // 4)
        if n < s.max_length:
            tries.append((f"max_length: {n}", {"max_length": n}))
    if not s.fused_logits:
        tries.append(
            ("chunked log-probs: TRL >= 1.16's fused LM head, or use_liger_kernel: true", {"fused_logits": True})
        )
    if s.method in ("grpo", "ppo"):
        n = _round_len(s.completion_length * 3 // 4)
        if n < s.completion_length:
            tries.append((f"max_completion_length: {n}", {"completion_length": n}))
        if s.num_generations > 2:
            g = s.num_generations // 2
            gb = max(g, s.generation_batch_size // 2)
            tries.append(
                (
                    f"num_generations: {g}, generation_batch_size: {gb}",
                    {"num_generations": g, "generation_batch_size": gb},
                )
            )
        if s.use_vllm and s.vllm_mode == "colocate" and not s.vllm_sleep:
            tries.append(("vllm_enable_sleep_mode: true", {"vllm_sleep": True}))
    if "8bit" not in s.optim.lower():
        tries.append(("optim: paged_adamw_8bit", {"optim": "paged_adamw_8bit"}))
    out = []
    for text, change in tries:
        new = with_settings(est, **change)
        if new.peak_bytes < est.peak_bytes - 0.05 * GiB:
            mark = "fits" if new.fits else "still too big"
            out.append((new.peak_bytes, f"{text}  ->  {new.peak_gib:.1f} GiB ({mark})"))
    return [text for _, text in sorted(out)]


def _candidate_changes(est: MemoryEstimate) -> list[tuple[str, dict, dict]]:
    """Single changes as `(name, settings changes, --key value overrides)`; the search combines them."""
    s = est.settings
    out: list[tuple[str, dict, dict]] = []
    if s.quantization == "none" and s.use_peft:
        out.append(
            (
                "4-bit QLoRA",
                {"quantization": "nf4", "double_quant": True, "kbit_prep": True},
                {"load_in_4bit": "true", "use_bnb_nested_quant": "true"},
            )
        )
    if not s.gradient_checkpointing:
        out.append(("checkpointing", {"gradient_checkpointing": True}, {"gradient_checkpointing": "true"}))
    b = s.batch_size
    while b > 1:
        b //= 2
        ga = s.grad_accum * s.batch_size // b
        out.append(
            (
                f"micro-batch {b}",
                {"batch_size": b, "grad_accum": ga},
                {"per_device_train_batch_size": str(b), "gradient_accumulation_steps": str(ga)},
            )
        )
    if s.method in ("dpo", "kto") and not s.precompute_ref:
        out.append(("precomputed reference", {"precompute_ref": True}, {"precompute_ref_log_probs": "true"}))
    if s.method in ("dpo", "kto"):
        for frac in (3, 2):
            n = _round_len(s.max_length * frac // 4)
            if n < s.max_length:
                out.append((f"max_length {n}", {"max_length": n}, {"max_length": str(n)}))
    if s.method in ("grpo", "ppo"):
        n = _round_len(s.completion_length // 2)
        if n < s.completion_length:
            out.append((f"completion {n}", {"completion_length": n}, {"max_completion_length": str(n)}))
        if s.num_generations > 2:
            g = s.num_generations // 2
            gb = max(g, s.generation_batch_size // 2)
            out.append(
                (
                    f"{g} generations",
                    {"num_generations": g, "generation_batch_size": gb},
                    {"num_generations": str(g), "generation_batch_size": str(gb)},
                )
            )
        if s.use_vllm and s.vllm_mode == "colocate" and not s.vllm_sleep:
            out.append(("vLLM sleep", {"vllm_sleep": True}, {"vllm_enable_sleep_mode": "true"}))
    if "8bit" not in s.optim.lower():
        out.append(("8-bit optimizer", {"optim": "paged_adamw_8bit"}, {"optim": "paged_adamw_8bit"}))
    return out


def smallest_fitting_change(est: MemoryEstimate, max_changes: int = 4) -> tuple[dict, MemoryEstimate] | None:
    """The smallest set of recipe changes the estimator says fits: fewest changes, then the mildest (highest peak).

    Searches every combination of up to `max_changes` of the candidate changes (4-bit QLoRA, gradient
    checkpointing, micro-batch with more accumulation, precomputed reference log-probs, shorter lengths, fewer
    generations, vLLM sleep mode, an 8-bit optimizer), one value per key.

    Returns:
        `tuple[dict, MemoryEstimate]` or `None`: the `--key value` overrides and their estimate, or `None` when no
        combination fits.
    """
    import itertools

    candidates = _candidate_changes(est)
    for k in range(1, max_changes + 1):
        fitting = []
        for combo in itertools.combinations(candidates, k):
            changes, overrides = {}, {}
            for _, change, override in combo:
                if set(change) & set(changes):  # two values of one key
                    break
                changes.update(change)
                overrides.update(override)
            else:
                new = with_settings(est, **changes)
                if new.fits:
                    fitting.append((new.peak_bytes, overrides, new))
        if fitting:
            _, overrides, new = max(fitting, key=lambda x: x[0])  # the mildest: the most memory left in use
            return overrides, new
    return None


def attach_suggestions(est: MemoryEstimate) -> MemoryEstimate:
    """Fill `est.suggestions` when the estimate does not fit, and return `est`: first the smallest set of changes
    that fits (`smallest_fitting_change`) as `--key value` overrides to paste, then single changes (`suggest`)."""
    if not est.fits:
        best = smallest_fitting_change(est)
        single = suggest(est)
        if best is not None:
            overrides, new = best
            flags = " ".join(f"--{k} {v}" for k, v in overrides.items())
            single.insert(0, f"fits with: {flags}  ->  {new.peak_gib:.1f} GiB")
        est.suggestions = single
    return est


def verdict(est: MemoryEstimate) -> str:
    """One line: whether the estimate fits the GPU, and why not."""
    gpu = est.gpu_bytes / GiB
    if est.problems:
        return f"DOES NOT FIT on {gpu:.1f} GiB: " + " ".join(est.problems)
    if est.fits:
        return f"FITS: predicted peak {est.peak_gib:.1f} GiB of {gpu:.1f} GiB ({est.peak_bytes / est.gpu_bytes:.0%})."
    return f"DOES NOT FIT: predicted peak {est.peak_gib:.1f} GiB exceeds {gpu:.1f} GiB."


def format_estimate(est: MemoryEstimate) -> str:
    """The `trl-ext estimate` table: components with phase and formula, the peak, notes, verdict, suggestions."""
    settings, arch = est.settings, est.architecture
    lines = [
        f"Memory estimate: {settings.method} on {arch.name} ({arch.total_params / 1e9:.2f}B params, "
        f"vocab {arch.vocab_size}), quantization {settings.quantization}, micro-batch {settings.batch_size}, "
        f"peak during {est.peak_phase}",
        "",
        f"  {'component':<46} {'phase':<11} {'GiB':>7}   formula",
    ]
    for c in sorted(est.components, key=lambda c: (c.phase not in ("static", "fixed"), -c.bytes)):
        counted = "" if c.phase in ("static", "fixed", est.peak_phase) else " (not at peak)"
        lines.append(f"  {c.name:<46} {c.phase:<11} {c.gib:7.2f}   {c.formula}{counted}")
    lines += [
        "",
        f"  {'allocated (tensors; cf. a trace, max_memory_allocated)':<58} {est.allocated_gib:7.2f}",
        f"  {'reserved incl. CUDA context (predicted peak)':<58} {est.peak_gib:7.2f}",
    ]
    for note in settings.notes:
        lines.append(f"  note: {note}")
    lines += ["", verdict(est)]
    if est.suggestions:
        lines.append("Suggestions (each re-estimated alone):")
        lines += [f"  - {x}" for x in est.suggestions]
    return "\n".join(lines)


def estimate_to_dict(est: MemoryEstimate) -> dict:
    """The estimate as JSON-ready data (`trl-ext estimate --json`)."""
    return {
        "model": est.architecture.name,
        "method": est.settings.method,
        "gpu_gib": round(est.gpu_bytes / GiB, 3),
        "peak_gib": round(est.peak_gib, 3),
        "allocated_gib": round(est.allocated_gib, 3),
        "peak_phase": est.peak_phase,
        "fits": est.fits,
        "components": [
            {"name": c.name, "phase": c.phase, "gib": round(c.gib, 4), "bytes": int(c.bytes), "formula": c.formula}
            for c in est.components
        ],
        "problems": est.problems,
        "suggestions": est.suggestions,
        "notes": list(est.settings.notes),
    }


def memory_check_error(est: MemoryEstimate) -> str | None:
    """The message `trl-ext train` refuses a recipe with, or `None` when the estimate fits."""
    if est.fits:
        return None
    biggest = ", ".join(f"{c.name} {c.gib:.1f} GiB" for c in est.biggest(3))
    message = (
        f"This recipe is predicted to need {est.peak_gib:.1f} GiB of GPU memory but the GPU has "
        f"{est.gpu_bytes / GiB:.1f} GiB. Biggest components: {biggest}."
    )
    if est.problems:
        message += " " + " ".join(est.problems)
    if est.suggestions:
        message += " Try: " + "; ".join(est.suggestions[:3]) + "."
    return (
        message + " Run `trl-ext estimate` on the recipe for the breakdown, or pass --skip_memory_check true to "
        "train anyway."
    )
