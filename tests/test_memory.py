"""The memory estimator: components against hand-computed values, monotonicity, verdicts and the train refusal."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import REPO, trl_ext_cli
from trl_ext.memory import (
    GiB,
    check_recipe_memory,
    estimate_memory,
    estimate_settings,
    load_architecture,
    with_settings,
)
from trl_ext.memory.settings import MemorySettings
from trl_ext.recipe import RecipeError, load_recipe

DPO_PRESET = REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml"


def write(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GRPO_RECIPE = """
method: grpo
model_name_or_path: Qwen/Qwen2.5-1.5B-Instruct
dataset_name: builtin:prompts
reward_funcs: [trl_ext.rewards.keyword.KeywordReward]
load_in_4bit: true
use_bnb_nested_quant: true
use_peft: true
lora_r: 16
output_dir: outputs/x
per_device_train_batch_size: 4
gradient_accumulation_steps: 4
num_generations: 8
max_completion_length: 256
beta: 0.04
bf16: true
optim: paged_adamw_8bit
"""


# ---------------------------------------------------------------------------------------------------- architectures


def test_bundled_architectures_have_the_published_parameter_counts():
    qwen = load_architecture("Qwen/Qwen2.5-7B-Instruct")
    llama = load_architecture("meta-llama/Llama-3.1-8B-Instruct")
    # Llama-3.1-8B: 32 x (2*4096^2 + 2*4096*1024 + 3*4096*14336) linear + 2*128256*4096 embeddings/head + norms
    assert llama.linear_params == 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) == 6_979_321_856
    assert llama.total_params == 8_030_261_248
    # Qwen2.5-7B: untied 152064-token embeddings/head, q/k/v biases
    assert qwen.linear_params == 28 * (2 * 3584**2 + 2 * 3584 * 512 + 3 * 3584 * 18944) == 6_525_288_448
    assert qwen.embedding_params == 2 * 152064 * 3584
    assert round(qwen.total_params / 1e9, 2) == 7.62


def test_unknown_model_names_the_fix():
    with pytest.raises(FileNotFoundError, match="huggingface-cli download nobody/none config.json"):
        load_architecture("nobody/none")


# ------------------------------------------------------------------------------------------- hand-computed values


def test_qwen7b_dpo_components_match_hand_computation():
    est = estimate_memory(DPO_PRESET)
    s = est.settings
    assert (s.method, s.batch_size, s.max_length, s.compute_bytes) == ("dpo", 2, 1024, 2)  # bf16 despite no GPU
    # NF4 with double quant: 0.5 + 1/64 + 4/(64*256) byte per linear weight
    assert est.component("base weights").bytes == pytest.approx(6_525_288_448 * (0.5 + 1 / 64 + 4 / 16384))
    # k-bit prep upcasts embeddings, lm_head, norms and qkv biases to fp32; lean activations put the input embedding
    # and the norms back to bf16, the untied lm_head and the biases stay fp32
    embedding, head, norms, biases = 152064 * 3584, 152064 * 3584, 28 * 2 * 3584 + 3584, 28 * (3584 + 2 * 512)
    assert est.component("embeddings, lm_head, norms").bytes == 2 * (embedding + norms) + 4 * (head + biases)
    fp32_stream = estimate_memory(DPO_PRESET, overrides=["--kbit_fp32_activations", "true"])
    assert fp32_stream.component("embeddings, lm_head, norms").bytes == 4 * (embedding + head + norms + biases)
    lora = 28 * 16 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert lora == 40_370_176
    assert est.component("adapter weights").bytes == 2 * lora
    assert est.component("optimizer states").bytes == 2 * lora  # paged_adamw_8bit: 2 x 1 byte
    # activations with checkpointing: T * (L*2*h + 12h), T = 2 * 2 * 1024: every layer input in bf16 (lean
    # activations), plus embedding/final norm/head input; 4 bytes per layer input with k-bit prep's fp32 stream
    h = 3584
    assert est.component("activations").bytes == 4096 * (28 * 2 * h + 12 * h)
    fp32 = estimate_memory(DPO_PRESET, overrides=["--kbit_fp32_activations", "true"])
    assert fp32.component("activations").bytes == 4096 * (28 * 4 * h + 12 * h)
    # fused LM head over the 3072 labelled (completion, 3/4 of max_length) tokens: a full-width 3072x32768 bf16 tile +
    # 7 fp32 stats/token + bf16 casts of two fp32 head chunks + fp32 dL/dhidden
    assert est.component("logits / log-probs").bytes == 3072 * 32768 * 2 + 3072 * 28 + 2 * 32768 * h * 2 + 3072 * h * 4
    assert est.peak_phase == "train"
    assert est.fits and 8 < est.peak_gib < 20


def test_ewc_fisher_storage_and_pass_match_hand_computation(tmp_path):
    # Llama-3.1-8B, all-linear: q,o (4096x4096), k,v (1024x4096), gate,up (14336x4096), down (4096x14336)
    per_layer_full = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    per_layer_vectors = 2 * (4096 + 4096) + 2 * (1024 + 4096) + 3 * (14336 + 4096)  # out + in per module
    base = (
        DPO_PRESET.read_text().replace("Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct")
        + "\newc_lambda: 100.0\newc_fisher_dataset: builtin:general_text\n"
    )
    kfac = estimate_memory(write(tmp_path, base + "ewc_fisher_mode: kfac\newc_fisher_dtype: bfloat16\n"))
    # factored diagonal: two vectors per module, stored in bf16
    assert kfac.component("EWC Fisher (K-FAC)").bytes == 32 * per_layer_vectors * 2
    full = estimate_memory(write(tmp_path, base + "ewc_fisher_mode: full\n", "full.yaml"))
    assert full.component("EWC Fisher (full weight space)").bytes == 32 * per_layer_full * 4  # fp32 diagonal
    # the pass at start keeps two fp32 accumulators (split halves) of the stored size, on top of its activations
    assert full.component("EWC Fisher pass").bytes > 2 * 32 * per_layer_full * 4
    assert full.component("EWC Fisher pass").phase == "fisher"
    assert not full.fits and kfac.peak_gib < full.peak_gib
    # a precomputed Fisher file means no pass at start
    (tmp_path / "f.safetensors").write_bytes(b"")
    from_file = estimate_memory(
        write(tmp_path, base + f"ewc_fisher_mode: kfac\newc_fisher_path: {tmp_path / 'f.safetensors'}\n", "f.yaml")
    )
    assert not any(c.name == "EWC Fisher pass" for c in from_file.components)
    # the penalty works in fp32 row chunks of at most 16 MiB (trl_ext.ewc.penalty), never a dense 14336x4096 product
    assert full.component("EWC penalty buffers").bytes == 3 * 16 * 2**20


def test_llama8b_grpo_generation_and_full_logits_match_hand_computation():
    arch = load_architecture("meta-llama/Llama-3.1-8B-Instruct")
    s = MemorySettings(
        method="grpo",
        model=arch.name,
        batch_size=2,
        grad_accum=4,
        generation_batch_size=8,
        num_generations=8,
        prompt_length=256,
        completion_length=512,
        beta=0.0,
        fused_logits=False,
        lean_activations=False,  # k-bit prep's fp32 stream: fp32 logits and KV cache
    )
    est = estimate_settings(arch, s, 24e9)
    # KV cache: 2 (k, v) * 32 layers * 8 kv heads * 128 * 4 bytes per token (fp32 k/v projections of the fp32
    # stream), 8 sequences of 768 tokens
    assert est.component("generation KV cache").bytes == 2 * 32 * 1024 * 4 * 8 * 768
    # completion-only full logits: B * C tokens x V x (4 fp32 logits + 4 log-softmax + 4 gradient): the head and the
    # stream are fp32 after k-bit preparation
    assert est.component("logits / log-probs").bytes == 2 * 512 * 128256 * 12
    assert "reference pass" not in [c.name for c in est.components]  # beta = 0: no reference model
    fused = with_settings(est, fused_logits=True)
    assert (
        fused.component("logits / log-probs").bytes
        == 1024 * 32768 * 2 + 1024 * 28 + 2 * 32768 * 4096 * 2 + 1024 * 4096 * 4
    )
    assert fused.peak_bytes < est.peak_bytes


# ---------------------------------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize(
    "key,values",
    [
        ("batch_size", [1, 2, 4, 8]),
        ("max_length", [512, 1024, 2048]),
    ],
)
def test_dpo_peak_grows_with_batch_and_length(key, values):
    base = estimate_memory(DPO_PRESET)
    peaks = [with_settings(base, **{key: v}).peak_bytes for v in values]
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)


def test_grpo_peak_grows_with_generations_and_completion_length(tmp_path):
    base = estimate_memory(write(tmp_path, GRPO_RECIPE))
    assert base.settings.generation_batch_size == 16  # 4 per device x 4 accumulation steps
    gens = [with_settings(base, num_generations=g, generation_batch_size=g * 4).peak_bytes for g in (4, 8, 16, 32)]
    assert gens == sorted(gens) and len(set(gens)) == 4
    lens = [with_settings(base, completion_length=c).peak_bytes for c in (128, 256, 512, 1024)]
    assert lens == sorted(lens) and len(set(lens)) == 4
    assert any("prompt length assumed 512" in n for n in base.settings.notes)


def test_precomputed_reference_and_checkpointing_lower_the_peak():
    base = estimate_memory(DPO_PRESET)
    # the reference pass fits in the room of the LM head's backward buffers (traced), so precomputing it moves it out
    # of the training phase without lowering this preset's peak
    pre = with_settings(base, precompute_ref=True)
    assert pre.peak_bytes <= base.peak_bytes and pre.component("reference pass").phase == "precompute"
    assert with_settings(base, gradient_checkpointing=False).peak_bytes > base.peak_bytes + 5 * GiB


# ------------------------------------------------------------------------------------------------------- verdicts


def test_vllm_colocate_holds_a_4bit_copy_of_a_4bit_policy(tmp_path):
    base = GRPO_RECIPE.replace("Qwen2.5-1.5B", "Qwen2.5-7B") + "use_vllm: true\nvllm_mode: colocate\n"
    est = estimate_memory(write(tmp_path, base + "vllm_gpu_memory_utilization: 0.3\n"))
    vllm = est.component("vLLM colocate (own weights + KV cache)")
    assert vllm.bytes == pytest.approx(0.3 * 24e9)
    # TRL 1.16 starts vLLM with bitsandbytes 4-bit for a 4-bit policy: NF4 decoder linears + 16-bit embeddings/head
    arch = est.architecture
    four_bit = arch.linear_params * (0.5 + 1 / 64 + 4 / 16384) + (arch.embedding_params + arch.other_params) * 2
    assert "4-bit weights 5.2 GiB inside" in vllm.formula and four_bit / GiB == pytest.approx(5.2, abs=0.05)
    assert not est.problems  # 7.2 GB holds the 4-bit copy; a 16-bit copy (14.2 GiB) would not
    small = estimate_memory(write(tmp_path, base + "vllm_gpu_memory_utilization: 0.2\n", "small.yaml"))
    assert "raise the utilization" in small.problems[0] and "4-bit weights (5.2 GiB)" in small.problems[0]
    sixteen = estimate_memory(write(tmp_path, base.replace("load_in_4bit: true", "load_in_4bit: false"), "16.yaml"))
    assert "16-bit weights (14.2 GiB)" in sixteen.problems[0]


def test_too_small_gpu_gets_concrete_suggestions():
    est = estimate_memory(DPO_PRESET, gpu_memory_gb=10)
    assert not est.fits
    assert any(s.startswith("per_device_train_batch_size: 1, gradient_accumulation_steps: 16") for s in est.suggestions)
    assert any(s.startswith("max_length: 768") for s in est.suggestions)


def test_train_refuses_a_recipe_that_does_not_fit_a_small_gpu():
    recipe = load_recipe(DPO_PRESET)
    with pytest.raises(RecipeError) as err:
        check_recipe_memory(recipe, gpu_memory_bytes=8 * GiB)
    message = str(err.value)
    assert "8.0 GiB" in message and "Biggest components: base weights 3.1 GiB" in message
    assert "--skip_memory_check true" in message
    assert check_recipe_memory(recipe, gpu_memory_bytes=24e9).fits
    forced = load_recipe(DPO_PRESET, ["--skip_memory_check", "true"])
    assert check_recipe_memory(forced, gpu_memory_bytes=8 * GiB) is None


def test_estimate_cli_prints_json_and_exit_code_follows_the_verdict():
    ok = trl_ext_cli("estimate", str(DPO_PRESET), "--json", timeout=120)
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout[ok.stdout.index("{") :])
    assert data["fits"] is True and data["method"] == "dpo" and data["peak_gib"] < 20
    assert {"base weights", "activations", "logits / log-probs", "reference pass"} <= {
        c["name"] for c in data["components"]
    }
    small = trl_ext_cli("estimate", str(DPO_PRESET), "--gpu-memory-gb", "10", timeout=120)
    assert small.returncode == 1 and "DOES NOT FIT" in small.stdout and "Suggestions" in small.stdout


def test_smallest_set_of_changes_that_fits_is_estimated_to_fit():
    from trl_ext.memory.report import smallest_fitting_change

    est = estimate_memory(DPO_PRESET, gpu_memory_gb=9)
    assert not est.fits
    overrides, new = smallest_fitting_change(est)
    assert new.fits and new.peak_bytes <= 9e9
    # the printed overrides, applied to the recipe, give the same fitting estimate
    flags = [x for k, v in overrides.items() for x in (f"--{k}", v)]
    again = estimate_memory(DPO_PRESET, gpu_memory_gb=9, overrides=flags)
    assert again.fits and again.peak_bytes == pytest.approx(new.peak_bytes)
    assert est.suggestions[0].startswith("fits with: --")
    # no single change is enough here: the search combines
    assert len(overrides) >= 3 and not any(s.endswith("(fits)") for s in est.suggestions[1:])
    assert overrides["per_device_train_batch_size"] == "1" and overrides["gradient_accumulation_steps"] == "16"


def test_adapter_states_follow_the_adapters_dtype_and_gradients_miss_the_top_of_backward():
    arch = load_architecture("Qwen/Qwen2.5-0.5B-Instruct")
    qlora = MemorySettings(method="dpo", model=arch.name, optim="adamw_torch", gradient_checkpointing=False)
    est = estimate_settings(arch, qlora, 24e9)
    n = est.component("adapter weights").bytes / 2  # bf16 QLoRA adapters (TRL casts them)
    assert est.component("optimizer states").bytes == 4 * n  # AdamW's two moments in bf16
    # traced, with and without checkpointing: the peak precedes every adapter gradient
    assert est.component("gradients").phase == "optimizer" and est.peak_phase == "train"
    ckpt = estimate_settings(arch, replace(qlora, gradient_checkpointing=True), 24e9)
    assert ckpt.component("gradients").phase == "optimizer" and ckpt.peak_phase == "train"
    full = estimate_settings(arch, replace(qlora, use_peft=False, quantization="none", kbit_prep=False), 24e9)
    assert full.component("gradients").phase == "static"
    lora = estimate_settings(arch, replace(qlora, quantization="none", kbit_prep=False), 24e9)
    assert lora.component("adapter weights").bytes == 4 * n  # PEFT keeps LoRA on a 16-bit base in fp32
    assert lora.component("optimizer states").bytes == 8 * n


def test_lora_dropout_costs_nothing_where_trl_disables_dropout(tmp_path):
    """DPO/KTO/GRPO/reward/PPO set every dropout to 0 (`disable_dropout`, on by default): a CPU trace of tiny-chat's
    DPO holds the same bytes with lora_dropout 0 and 0.05 (with and without checkpointing, 2 x 256 and 2 x 512
    tokens), so the estimate counts no dropout copies there; SFT keeps its dropout."""
    from trl_ext.memory import settings_from_recipe
    from trl_ext.recipe import load_recipe

    dpo = load_recipe(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml")
    assert dpo.model.lora_dropout == 0.05 and settings_from_recipe(dpo).lora_dropout == 0.0
    kept = load_recipe(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml", ["--disable_dropout", "false"])
    assert settings_from_recipe(kept).lora_dropout == 0.05
    sft = load_recipe(REPO / "recipes" / "quickstart" / "sft.yaml", ["--lora_dropout", "0.1"])
    assert settings_from_recipe(sft).lora_dropout == 0.1


def test_accumulated_adapter_gradients_count_at_the_peak():
    """Traced on Qwen2.5-7B's architecture (DPO, 2 micro-batches per step): the adapters' bytes at the peak are weights
    + 8-bit states + the gradients of the earlier micro-batch (3 x 77 MiB); without accumulation no gradient yet."""
    from trl_ext.memory import estimate_memory

    path = REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml"
    accumulated = estimate_memory(load_recipe(path), gpu_memory_gb=24).component("gradients")
    single = estimate_memory(load_recipe(path, ["--gradient_accumulation_steps", "1"]), gpu_memory_gb=24)
    assert accumulated.phase == "static" and accumulated.bytes == pytest.approx(40.4e6 * 2, rel=0.01)
    assert single.component("gradients").phase == "optimizer"
