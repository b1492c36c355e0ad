"""Reduced-depth and reduced-length traces: the bilinear extrapolation and `memcheck --device cpu --lengths`."""

from __future__ import annotations

import pytest

from conftest import REPO
from trl_ext.memcheck import memcheck_cli
from trl_ext.memory.extrapolate import bilinear_coefficients, extrapolate_depth, extrapolate_grid


def _memory(d: int, n: int) -> dict:
    """A synthetic trace result whose train peak is exactly bilinear: 1000 + 50 d + 7 n + 3 d n bytes."""
    weights = 1000 + 50 * d
    activations = 7 * n + 3 * d * n
    train = {"peak_bytes": weights + activations, "by_category": {"weights": weights, "activations": activations}}
    generation = {"peak_bytes": weights + n, "by_category": {"weights": weights, "kv_cache": n}}
    return {
        "peak_bytes": train["peak_bytes"],
        "phase": "train",
        "by_category": train["by_category"],
        "phases": {"train": train, "generation": generation},
    }


def test_bilinear_grid_extrapolates_exactly_to_the_real_depth_and_length():
    grid = {(d, n): _memory(d, n) for d in (1, 2) for n in (128, 256)}
    out = extrapolate_grid(grid, 32, 4096)
    assert out["peak_bytes"] == 1000 + 50 * 32 + 7 * 4096 + 3 * 32 * 4096
    assert out["phase"] == "train"
    assert out["by_category"] == {"weights": 1000 + 50 * 32, "activations": 7 * 4096 + 3 * 32 * 4096}
    assert out["phases"]["generation"]["by_category"] == {"kv_cache": 4096, "weights": 2600}
    # every category of the breakdown is extrapolated on its own and they still add up to the peak
    assert sum(out["by_category"].values()) == out["peak_bytes"]


def test_bilinear_coefficients_recover_the_per_layer_per_token_slope():
    values = {(d, n): _memory(d, n)["peak_bytes"] for d in (1, 3) for n in (64, 512)}
    coef = bilinear_coefficients(values)
    assert coef == pytest.approx({"a": 1000, "b": 50, "c": 7, "e": 3})


def test_one_axis_grids_are_lines_and_depth_only_matches_the_old_extrapolation():
    by_depth = {d: _memory(d, 256) for d in (1, 2)}
    assert extrapolate_depth(by_depth, 24)["peak_bytes"] == _memory(24, 256)["peak_bytes"]
    by_length = {(24, n): _memory(24, n) for n in (128, 256)}
    assert extrapolate_grid(by_length, 24, 1024)["peak_bytes"] == _memory(24, 1024)["peak_bytes"]


def test_the_peak_phase_is_the_largest_after_extrapolation():
    """A phase smaller on the grid can set the peak at the real settings: it is chosen after extrapolating."""
    grid = {(d, n): _memory(d, n) for d in (1, 2) for n in (8, 16)}
    for r in grid.values():
        r["phases"]["generation"]["peak_bytes"] += 4000  # bigger on the grid, flat in depth and length
    assert extrapolate_grid(grid, 1, 8)["phase"] == "generation"
    assert extrapolate_grid(grid, 32, 1024)["phase"] == "train"


def test_a_grid_with_a_missing_corner_is_refused():
    grid = {(1, 128): _memory(1, 128), (2, 256): _memory(2, 256)}
    with pytest.raises(ValueError, match="full grid"):
        extrapolate_grid(grid, 32, 1024)


def test_length_overrides_scale_the_method_key_and_the_fisher_pass_in_proportion():
    from trl_ext.memcheck_lengths import length_key, length_overrides
    from trl_ext.recipe import load_recipe

    ewc = load_recipe(REPO / "recipes" / "dpo" / "llama3.1-8b-qlora-ewc.yaml")
    assert length_key(ewc) == "max_length"
    out = length_overrides(ewc, 256)  # max_length 1024 -> 256: the 512-token Fisher pass -> 128
    assert out[:2] == ["--max_length", "256"]
    assert dict(zip(out[2::2], out[3::2], strict=True)) == {
        "--ewc_fisher_max_length": "128",
        "--forgetting_max_length": "128",
    }
    grpo = load_recipe(REPO / "recipes" / "grpo" / "qwen2.5-7b-query-rewrite.yaml")
    assert length_overrides(grpo, 24) == ["--max_completion_length", "24"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "128,x"], "--lengths takes comma-separated token counts"),
        (["--lengths", "256,128"], "--lengths needs two or three increasing values in 1..1024, got 256,128"),
        (["--lengths", "128,2048"], "in 1..1024"),
        (["--depths", "1,2", "--lengths", "128"], "--lengths needs two or three"),
        (["--depths", "1,40"], "--depths needs two or three increasing values in 1..28"),
    ],
)
def test_bad_axes_are_one_line_errors_before_anything_loads(capsys, args, message):
    recipe = str(REPO / "recipes" / "dpo" / "qwen2.5-7b-qlora.yaml")
    assert memcheck_cli([recipe, "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trl-ext: error: ") and message in err and err.count("\n") == 1


def test_a_generating_recipe_refuses_a_depth_axis_that_starts_at_one_layer(capsys):
    recipe = str(REPO / "recipes" / "grpo" / "qwen2.5-7b-query-rewrite.yaml")
    assert memcheck_cli([recipe, "--device", "cpu", "--depths", "1,2", "--lengths", "12,24"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trl-ext: error: --depths must start at 2 or more for a grpo recipe, got 1,2")
    assert err.rstrip().endswith("Use --depths 2,3.") and err.count("\n") == 1


@pytest.mark.slow
def test_depth_by_length_grid_on_tiny_chat_matches_a_direct_trace():
    """Four real traces of tiny-chat's DPO (1-2 layers x 32-64 tokens), extrapolated to (2 layers, 128 tokens), the
    length checked by (1 layer, 128 tokens) traced directly; the estimate at the real settings stays within 10 %."""
    from trl_ext.memcheck_cpu import trace_recipe

    recipe = REPO / "recipes" / "quickstart" / "dpo.yaml"
    result = trace_recipe(recipe, ["--max_length", "128"], depths=(1, 2), lengths=(32, 64, 128), steps=1)
    assert set(result["points_gib"]) == {"1x32", "1x64", "2x32", "2x64", "1x128"}
    assert set(result["point_seconds"]) == set(result["points_gib"])
    assert result["validation_point"] == "1x128"
    assert abs(result["extrapolation_error"]) < 0.02, result
    assert result["points_gib"]["1x128"] < result["traced_peak_gib"]
    assert result["coefficients_bytes"]["per_layer_per_token"] > 0
    assert result["mode"] == "extrapolated from 1/2 layers to 2 x max_length 32/64 to 128"
    assert 0.9 <= result["estimate_ratio"] <= 1.1, result


def test_anchor_passes_are_traced_on_synthetic_full_length_text_offline(tmp_path):
    """The EWC preset names Hub datasets for its Fisher and monitor: the trace writes its own anchor text instead,
    as long as the recipe's passes (512 tokens), and runs 4 samples (a pass's memory does not grow with the count)."""
    import json

    from trl_ext.memcheck_cpu import _anchor_overrides
    from trl_ext.recipe import load_recipe

    t = load_recipe(REPO / "recipes" / "dpo" / "llama3.1-8b-qlora-ewc.yaml").training
    out = _anchor_overrides(t, tmp_path, vocab=1000)
    pairs = dict(zip(out[::2], out[1::2], strict=True))
    assert pairs["--ewc_fisher_dataset"] == str(tmp_path / "ewc_fisher_dataset.jsonl")
    assert pairs["--forgetting_anchor_dataset"] == str(tmp_path / "forgetting_anchor_dataset.jsonl")
    assert pairs["--ewc_fisher_samples"] == "4" and pairs["--forgetting_eval_samples"] == "4"
    assert pairs["--ewc_fisher_split"] == "train" and pairs["--forgetting_anchor_split"] == "train"
    rows = [json.loads(line) for line in (tmp_path / "ewc_fisher_dataset.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["text"].split()) == 512 for r in rows)
    plain = load_recipe(REPO / "recipes" / "dpo" / "llama3.1-8b-qlora.yaml").training
    assert _anchor_overrides(plain, tmp_path, vocab=1000) == []


@pytest.mark.slow
def test_lora_dropout_under_disable_dropout_is_traced_and_estimated_as_none():
    from trl_ext.memcheck_cpu import trace_recipe

    recipe = REPO / "recipes" / "quickstart" / "dpo.yaml"
    common = ["--max_length", "256", "--gradient_checkpointing", "true", "--per_device_train_batch_size", "2"]
    with_dropout = trace_recipe(recipe, [*common, "--lora_dropout", "0.05"], steps=1)
    without = trace_recipe(recipe, [*common, "--lora_dropout", "0.0"], steps=1)
    assert with_dropout["traced_peak_gib"] == without["traced_peak_gib"]
    assert with_dropout["estimated_peak_gib"] == without["estimated_peak_gib"]
    assert 0.97 <= with_dropout["estimate_ratio"] <= 1.03, with_dropout


def test_the_printed_trace_says_where_the_extrapolation_was_checked():
    from trl_ext.memcheck_cpu import format_trace

    result = {
        "recipe": "r.yaml",
        "mode": "extrapolated from 1/2 layers to 28 x max_length 128/256 to 1024",
        "compute_dtype": "bfloat16",
        "phase": "train",
        "traced_peak_gib": 8.3872,
        "estimated_peak_gib": 8.5225,
        "estimate_ratio": 1.0161,
        "by_category_gib": {"weights": 6.18, "activations": 1.98},
        "reserved_incl_cuda_gib": 9.288,
        "estimated_reserved_gib": 9.449,
        "validation_point": "1x512",
        "extrapolation_error": -0.0095,
        "notes": [],
    }
    text = format_trace(result)
    assert "extrapolated from 1/2 layers to 28 x max_length 128/256 to 1024" in text
    assert text.endswith("extrapolation checked at 1x512 traced directly: -0.9%")
