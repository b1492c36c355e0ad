"""Every preset recipe validates (no weights loaded) and the 24 GB presets fit their budget by the estimate."""

from __future__ import annotations

import re

import pytest

from conftest import RECIPES
from trl_ext.memory import PRESET_TARGET_GIB, estimate_memory
from trl_ext.pipeline import is_pipeline, load_pipeline
from trl_ext.recipe import load_recipe, resolve_accelerate_config

PRESET_DIRS = ("dpo", "grpo", "ppo", "kto")
ALL = sorted(p for d in (*PRESET_DIRS, "quickstart") for p in (RECIPES / d).glob("*.yaml") if not is_pipeline(p))
PIPELINES = sorted(p for d in ("pipeline", "quickstart") for p in (RECIPES / d).glob("*.yaml") if is_pipeline(p))
GPU_PIPELINES = [p for p in PIPELINES if p.parent.name == "pipeline"]
#: a pipeline file's name ends with what it runs
PIPELINE_KINDS = {"rlhf": ["sft", "reward", "ppo"], "sft-dpo": ["sft", "dpo"], "sft-grpo": ["sft", "grpo"]}
GPU_PRESETS = [p for p in ALL if p.parent.name in PRESET_DIRS]


def _id(path):
    return f"{path.parent.name}/{path.name}"


def _method_of(path) -> str:
    """The method a recipe's place names: its folder for presets, its file name's prefix for quickstarts."""
    return path.parent.name if path.parent.name in PRESET_DIRS else path.stem.split("-")[0]


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_recipe_validates_and_runs_the_method_its_name_says(path):
    recipe = load_recipe(path)
    assert recipe.method == _method_of(path)


@pytest.mark.parametrize("path", GPU_PRESETS, ids=_id)
def test_gpu_preset_names_single_gpu_accelerate_config_and_fits_20_gib(path):
    recipe = load_recipe(path)
    assert recipe.script.accelerate_config == "../accelerate/single_gpu.yaml"
    assert resolve_accelerate_config(str(path), recipe.script.accelerate_config).endswith("single_gpu.yaml")
    est = estimate_memory(recipe, gpu_memory_gb=24)
    assert est.fits and est.peak_gib <= PRESET_TARGET_GIB, f"{path.name}: {est.peak_gib:.1f} GiB"
    stated = re.search(r"^# Estimated peak: (\d+\.\d) GiB", path.read_text(), re.M)
    assert stated, "state the estimate in a comment"
    assert stated.group(1) == f"{est.peak_gib:.1f}", (
        f"{path.name}: comment says {stated.group(1)}, estimate {est.peak_gib:.1f}"
    )


def test_the_library_has_7b_qlora_dpo_and_kto_presets():
    names = {_id(p) for p in GPU_PRESETS}
    assert {"dpo/qwen2.5-7b-qlora.yaml", "kto/qwen2.5-7b-qlora.yaml"} <= names


@pytest.mark.parametrize("path", PIPELINES, ids=_id)
def test_pipeline_validates_every_stage_and_runs_what_its_name_says(path):
    pipeline = load_pipeline(path)
    kind = next(k for k in PIPELINE_KINDS if path.stem.endswith(k))
    assert [s.method for s in pipeline.stages] == PIPELINE_KINDS[kind] == [s.name for s in pipeline.stages]
    last = pipeline.stages[-1]
    assert last.references["sft_adapter_path"] == "sft"  # the policy starts from the SFT stage
    assert last.recipe.training.sft_adapter_path == str(pipeline.output_dir / "sft")
    if kind == "rlhf":
        assert last.recipe.training.reward_adapter_path == str(pipeline.output_dir / "reward")


@pytest.mark.parametrize("path", GPU_PIPELINES, ids=_id)
def test_gpu_pipeline_preset_fits_20_gib_in_every_stage_and_states_each_estimate(path):
    pipeline = load_pipeline(path)
    assert pipeline.stages[0].recipe.script.accelerate_config == "../accelerate/single_gpu.yaml"
    stated = re.search(r"^# Estimated peak per stage .*: (.*)$", path.read_text(), re.M)
    assert stated, "state every stage's estimate in a comment"
    stated = dict(re.findall(r"(\S+) (\d+\.\d) GiB", stated.group(1)))
    for stage in pipeline.stages:
        est = estimate_memory(stage.recipe, gpu_memory_gb=24)
        assert est.fits and est.peak_gib <= PRESET_TARGET_GIB, f"{path.name} {stage.name}: {est.peak_gib:.1f} GiB"
        assert stated.get(stage.name) == f"{est.peak_gib:.1f}", f"{stage.name}: stated {stated}, {est.peak_gib:.1f}"


def test_the_library_has_the_7b_rlhf_and_8b_sft_dpo_pipelines():
    assert {"pipeline/qwen2.5-7b-rlhf.yaml", "pipeline/llama3.1-8b-sft-dpo.yaml"} <= {_id(p) for p in GPU_PIPELINES}
