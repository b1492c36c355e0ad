"""memcheck: its CPU message and the synthetic data it would train on."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from trl_ext.memcheck import memcheck_cli, synthetic_lengths, synthetic_rows, word_tokenizer
from trl_ext.recipe import load_recipe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a CUDA GPU")
def test_memcheck_on_cpu_exits_with_a_clear_message(capsys):
    code = memcheck_cli([str(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml"), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs a CUDA GPU" in err and "trl-ext estimate" in err


def test_dpo_synthetic_rows_fill_max_length_exactly():
    recipe = load_recipe(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml")
    lengths = synthetic_lengths(recipe)
    assert lengths == {"prompt": 256, "completion": 768}  # prompt + completion = max_length 1024
    rows = synthetic_rows("dpo", lengths, 3, vocab_size=1000)
    tok = word_tokenizer(1000)
    assert len(tok.vocab) == 1000 and tok.eos_token_id == 999
    assert [len(tok(r["prompt"])["input_ids"]) for r in rows] == [256] * 3
    assert [len(tok(r["chosen"])["input_ids"]) for r in rows] == [768] * 3
    assert set(rows[0]) == {"prompt", "chosen", "rejected"}


def test_grpo_synthetic_lengths_use_the_completion_limit(tmp_path):
    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        "method: grpo\nmodel_name_or_path: Qwen/Qwen2.5-1.5B-Instruct\ndataset_name: builtin:prompts\n"
        "reward_funcs: [trl_ext.rewards.keyword.KeywordReward]\nmax_completion_length: 200\n"
        "output_dir: outputs/x\n"
    )
    lengths = synthetic_lengths(load_recipe(recipe), prompt_length=96)
    assert lengths == {"prompt": 96, "completion": 200}
    rows = synthetic_rows("kto", lengths, 4, vocab_size=500)
    assert [r["label"] for r in rows] == [True, False, True, False]


def test_a_trace_swaps_column_reading_rewards_for_one_the_synthetic_rows_can_feed(tmp_path):
    """The query-rewrite reward reads `query`/`gold_doc_ids`, which synthetic prompt-only rows lack: every entry
    becomes `trace_reward`, whose rewards differ within a group, and the run's recipe loads it."""
    from trl_ext.memcheck_cpu import TRACE_REWARD, _run_overrides
    from trl_ext.memcheck_data import trace_reward
    from trl_ext.rewards import load_reward_funcs

    path = REPO / "recipes" / "grpo" / "qwen2.5-1.5b-qlora-query-rewrite.yaml"
    recipe = load_recipe(path)
    extra = _run_overrides(recipe, tmp_path / "model", tmp_path, 1, {"prompt": 8, "completion": 8}, 1000)
    run = load_recipe(path, extra)
    assert run.script.reward_funcs == [TRACE_REWARD] and run.script.reward_kwargs in ({}, "{}")
    (reward,) = load_reward_funcs(run.script.reward_funcs)
    rows = synthetic_rows("sft", {"prompt": 1, "completion": 8}, 8, vocab_size=1000)
    rewards = reward(prompts=[r["prompt"] for r in rows], completions=[r["completion"] for r in rows])
    assert rewards == trace_reward([r["completion"] for r in rows])
    assert len(set(rewards)) == 8 and all(0 <= r < 1 for r in rewards)


# ------------------------------------------------------------------------------------------------- CPU trace


def test_trl_cpu_fallbacks_the_trace_leaves_out_still_exist():
    """The trace wraps these private TRL functions (no public hook): fail loudly when TRL moves them."""
    import importlib

    from trl_ext.memory.trace import COMPACT_SWITCH, CPU_FALLBACKS

    module = importlib.import_module(CPU_FALLBACKS[0])
    assert all(callable(getattr(module, name, None)) for name in CPU_FALLBACKS[1])
    assert callable(getattr(importlib.import_module(COMPACT_SWITCH[0]), COMPACT_SWITCH[1], None))


def test_tracer_counts_live_bytes_by_phase_and_frees_them():
    from trl_ext.memory.trace import LiveBytesTracer

    tracer = LiveBytesTracer(vocab_sizes=(50,))
    with tracer:
        with tracer.in_phase("train"):
            a = torch.ones(1000)  # 4000 bytes of activations
            logits = torch.zeros(10, 50)  # 2000 bytes of logits
            del a
            b = torch.ones(10)
        with tracer.in_phase("generation"):
            c = torch.ones(2000, dtype=torch.bfloat16)
    result = tracer.result()
    assert result["phases"]["train"]["peak_bytes"] == 6000
    assert result["phases"]["train"]["by_category"]["logits"] == 2000
    assert result["phases"]["generation"]["peak_bytes"] == 2000 + 40 + 4000
    assert result["phase"] == "generation" and tracer.total == 2000 + 40 + 4000
    del logits, b, c


def test_a_rollout_phase_counts_the_optimizer_states_a_later_rollout_runs_beside():
    from trl_ext.memory.trace import LiveBytesTracer

    tracer = LiveBytesTracer()
    with tracer:
        adapter = torch.ones(100)  # 400 bytes of trainable weights
        tracer.track(adapter, "adapters")
        with tracer.in_phase("generation"):
            kv = torch.ones(1000)  # the first rollout: 4000 bytes, before any optimizer state exists
            del kv
        with tracer.in_phase("train"), tracer.forced_category("adapters"):
            states = torch.ones(200)  # 800 bytes that persist from the first step on
    plain, steady = tracer.result(), tracer.result(steady_phases=("generation",))
    assert plain["phases"]["generation"]["peak_bytes"] == 4400
    assert steady["phases"]["generation"]["peak_bytes"] == 5200
    assert steady["phases"]["generation"]["by_category"]["adapters"] == 1200 and steady["phase"] == "generation"
    assert steady["phases"]["train"] == plain["phases"]["train"]
    del adapter, states


# Every method on tiny-chat (4-bit, LoRA r=16, bf16 compute), two real optimizer steps each; the three-length grid
# and the reduced-depth Qwen2.5-0.5B traces are in benchmarks/memory_calibration.py (results committed).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("dpo", ["--max_length", "64"]),
        ("kto", ["--max_length", "64"]),
        ("sft", ["--max_length", "64"]),
        ("reward", ["--max_length", "64"]),
        ("grpo", ["--max_completion_length", "32"]),
        ("ppo", ["--max_completion_length", "32"]),
    ],
)
def test_estimate_within_10_percent_of_the_cpu_trace_for_every_method(method, overrides):
    from trl_ext.memcheck_cpu import trace_recipe

    result = trace_recipe(REPO / "recipes" / "quickstart" / f"{method}.yaml", overrides, prompt_length=64)
    assert result["compute_dtype"] == "bfloat16" and result["phase"] == "train"
    assert result["by_category_gib"]["activations"] > 0 and result["by_category_gib"]["weights"] > 0
    assert (result["by_category_gib"]["logits"] > 0) == (method != "reward")  # a score head has no vocabulary
    assert 0.9 <= result["estimate_ratio"] <= 1.1, result


# The EWC Fisher pass at start, made the largest phase (4 x 256 anchor tokens against 32-token DPO rows): its traced
# peak against the estimator's figure for that phase. A hook that kept an fp32 copy of each adapted module's bf16
# input traced 0.0278 GiB here against the 0.0201 GiB estimate (kfac).
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kfac", "full"])
def test_fisher_pass_estimate_within_10_percent_of_its_trace(mode):
    from trl_ext.memcheck_cpu import trace_recipe

    overrides = ["--max_length", "32", "--ewc_fisher_max_length", "256", "--ewc_fisher_batch_size", "4"]
    result = trace_recipe(REPO / "recipes" / "quickstart" / "dpo-ewc.yaml", overrides + ["--ewc_fisher_mode", mode])
    assert result["compute_dtype"] == "bfloat16"
    traced, estimated = result["phases"]["fisher"], result["estimated_phases"]["fisher"]
    assert traced > 0.5 * result["phases"]["train"], result["phases"]  # the pass is big enough to measure
    assert 0.9 <= estimated / traced <= 1.1, (traced, estimated)


# Generation as the largest phase: 64 completions of 256 prompt + 32 tokens generated at once (8 micro-batches of 8
# per generation). The estimate before the prefill was counted as traced (four residual-width and four MLP-width
# tensors at the last layer, PEFT's clone of each 4-bit output included; the prefill freed before the sampling logits
# exist) was 0.856 of the GRPO trace.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "batches"),
    [("grpo", ["--steps_per_generation", "8"]), ("ppo", ["--num_mini_batches", "8"])],
)
def test_generation_estimate_within_10_percent_of_its_trace(method, batches):
    from trl_ext.memcheck_cpu import trace_recipe

    recipe = REPO / "recipes" / "quickstart" / f"{method}.yaml"
    result = trace_recipe(recipe, ["--max_completion_length", "32", *batches], prompt_length=256)
    assert result["phase"] == result["estimated_phase"] == "generation", result["phases"]
    assert result["by_category_gib"]["kv_cache"] > 0 and result["phases"]["train"] < result["phases"]["generation"]
    assert 0.9 <= result["estimate_ratio"] <= 1.1, result


def test_a_trace_that_runs_no_training_step_is_an_error_not_a_peak(monkeypatch):
    import trl_ext.train
    from trl_ext.memcheck_cpu import trace_once

    class Idle:  # a trainer that stops before its first step, as one with an empty epoch does
        model = torch.nn.Linear(2, 2)

        def train(self):
            return None

    monkeypatch.setattr(trl_ext.train, "build_trainer", lambda recipe: Idle())
    with pytest.raises(RuntimeError, match=r"ran no training step \(phases traced: load\)"):
        trace_once(REPO / "recipes" / "quickstart" / "grpo.yaml", ["--max_completion_length", "8"], num_layers=1)


# Activation offloading, emulated on a CPU (TRL's own needs an accelerator): SFT on tiny-chat's architecture at 12
# layers x 2048 tokens with checkpointing, where the saved layer inputs are 12 x 2048 x 128 x 2 B = 6 MiB. If TRL's
# trainers stop building their offloading context through `get_act_offloading_ctx_manager`, TRL's own starts on a
# CPU and fails (no accelerator), and this test with it.
@pytest.mark.slow
def test_emulated_activation_offloading_moves_the_saved_layer_inputs_off_and_the_estimate_follows():
    from trl_ext.memcheck_cpu import _estimate_for, trace_once

    recipe = REPO / "recipes" / "quickstart" / "sft.yaml"
    base = ["--max_length", "2048", "--gradient_checkpointing", "true", "--per_device_train_batch_size", "1"]
    traced, estimated = {}, {}
    for on in ("false", "true"):
        overrides = base + ["--activation_offloading", on]
        result = trace_once(recipe, overrides, num_layers=12)
        traced[on] = result["by_category"]["activations"]
        estimated[on] = _estimate_for(load_recipe(recipe, overrides), 12).component("activations").bytes
        assert any("offloading" in n for n in result["notes"]) == (on == "true")
    saved_inputs = 12 * 2048 * 128 * 2
    assert traced["false"] - traced["true"] > 0.6 * saved_inputs, traced  # most of the layer inputs left the GPU
    for on in traced:
        assert 0.9 <= estimated[on] / traced[on] <= 1.1, (on, traced, estimated)
