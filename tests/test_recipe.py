"""Recipe parsing and validation: every error names the key and the fix, before any weight is loaded."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
import torch

from conftest import MINIMAL_RECIPE, RECIPES, trl_ext_cli, write_recipe
from trl_ext.recipe import RecipeError, load_recipe
from trl_ext.runtime import apply_runtime

without_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU fallback of mixed precision")

BASE = MINIMAL_RECIPE
write = write_recipe


def test_quickstart_recipe_parses_into_trl_configs():
    recipe = load_recipe(str(RECIPES / "quickstart" / "dpo.yaml"))
    assert recipe.method == "dpo"
    assert type(recipe.training).__name__ == "DPOConfig"
    assert recipe.training.beta == 0.1
    assert recipe.training.max_steps == 40
    assert recipe.model.load_in_4bit is True and recipe.model.use_peft is True
    assert recipe.script.dataset_name == "builtin:preferences"


def test_cli_override_beats_yaml(tmp_path):
    path = write(tmp_path, {**BASE, "learning_rate": 1.0e-4, "beta": 0.1})
    recipe = load_recipe(
        path, ["--learning_rate", "3e-6", "--beta=0.5", "--load_in_4bit", "true", "--use_peft", "true"]
    )
    assert recipe.training.learning_rate == pytest.approx(3e-6)
    assert recipe.training.beta == pytest.approx(0.5)
    assert recipe.model.load_in_4bit is True


def test_unknown_key_names_key_method_and_closest_valid_key(tmp_path):
    path = write(tmp_path, {**BASE, "lerning_rate": 1e-4})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "'lerning_rate'" in msg and "'dpo'" in msg and "Did you mean 'learning_rate'?" in msg


def test_key_of_another_method_says_which_method_it_belongs_to(tmp_path):
    path = write(tmp_path, {**BASE, "num_generations": 4})
    with pytest.raises(RecipeError, match=r"'num_generations'.*key of method 'grpo', not of 'dpo'"):
        load_recipe(path)


def test_unknown_cli_override_is_reported(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(RecipeError, match=r"'max_lenght'.*command-line overrides.*Did you mean 'max_length'"):
        load_recipe(path, ["--max_lenght", "64"])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("learning_rate", "fast", r"'learning_rate' has value 'fast', but dpo expects float"),
        ("per_device_train_batch_size", 2.5, r"'per_device_train_batch_size' has value 2.5, but dpo expects int"),
        ("gradient_checkpointing", "maybe", r"'gradient_checkpointing' has value 'maybe', but dpo expects bool"),
        ("lr_scheduler_type", "zigzag", r"'lr_scheduler_type' has value 'zigzag'.*one of 'linear', 'cosine'"),
        ("lora_target_modules", 5, r"'lora_target_modules' has value 5, but dpo expects a list of str"),
    ],
)
def test_wrong_type_or_value_names_key_and_what_is_allowed(tmp_path, key, value, expected):
    path = write(tmp_path, {**BASE, key: value})
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


def test_float_written_without_dot_is_accepted(tmp_path):
    # YAML 1.1 reads `1e-5` as a string; TRL would fail late. We accept it as the float it means.
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent("""\
        method: dpo
        model_name_or_path: builtin:tiny-chat
        dataset_name: builtin:preferences
        learning_rate: 1e-5
    """)
    )
    assert load_recipe(str(path)).training.learning_rate == pytest.approx(1e-5)


def test_unknown_method_suggests_closest(tmp_path):
    path = write(tmp_path, {**BASE, "method": "dop"})
    with pytest.raises(RecipeError, match=r"Unknown method 'dop'.*Did you mean 'dpo'"):
        load_recipe(path)


def test_missing_method_and_model_and_dataset_are_named(tmp_path):
    with pytest.raises(RecipeError, match="no 'method' key"):
        load_recipe(write(tmp_path, {k: v for k, v in BASE.items() if k != "method"}))
    with pytest.raises(RecipeError, match="no 'model_name_or_path'"):
        load_recipe(write(tmp_path, {k: v for k, v in BASE.items() if k != "model_name_or_path"}))
    with pytest.raises(RecipeError, match="names no dataset"):
        load_recipe(write(tmp_path, {k: v for k, v in BASE.items() if k != "dataset_name"}))


def test_quantization_without_peft_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="4-bit without use_peft.*use_peft: true"):
        load_recipe(write(tmp_path, {**BASE, "load_in_4bit": True}))


def test_online_method_without_reward_is_refused(tmp_path):
    mapping = {**BASE, "method": "grpo", "dataset_name": "builtin:prompts"}
    with pytest.raises(RecipeError, match="names no reward.*reward_funcs"):
        load_recipe(write(tmp_path, mapping))
    with pytest.raises(RecipeError, match="names no reward.*reward_funcs.*reward_adapter_path"):
        load_recipe(write(tmp_path, {**mapping, "method": "ppo"}))


def test_unimportable_reward_function_is_named_before_anything_loads(tmp_path):
    from trl_ext.train import preflight

    mapping = {**BASE, "method": "grpo", "dataset_name": "builtin:prompts", "reward_funcs": ["trl_ext.rewards.nope.X"]}
    recipe = load_recipe(write(tmp_path, mapping))  # keys and values are fine; the import is checked at launch
    with pytest.raises(
        RecipeError,
        match=r"reward_funcs entry 'trl_ext.rewards.nope.X' .* cannot be loaded: "
        r"No module named 'trl_ext.rewards.nope'",
    ):
        preflight(recipe)


@without_gpu
def test_load_recipe_keeps_bf16_as_written_and_parses_for_the_cpu(tmp_path):
    recipe = load_recipe(write(tmp_path, {**BASE, "bf16": True}))
    assert recipe.training.bf16 is True and recipe.training.use_cpu is True
    assert recipe.runtime_applied is False


def test_load_recipe_leaves_the_environment_unchanged(tmp_path, monkeypatch):
    monkeypatch.delenv("TRL_EXT_TEST_VAR", raising=False)
    load_recipe(write(tmp_path, BASE))  # imports settle first: TRL and torch set variables of their own on import
    before = dict(os.environ)
    recipe = load_recipe(write(tmp_path, {**BASE, "env": {"TRL_EXT_TEST_VAR": 7}}))
    assert dict(os.environ) == before
    assert recipe.env == {"TRL_EXT_TEST_VAR": "7"}


@without_gpu
def test_runtime_exports_env_and_turns_mixed_precision_off_without_gpu(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TRL_EXT_TEST_VAR", raising=False)
    recipe = load_recipe(write(tmp_path, {**BASE, "bf16": True, "env": {"TRL_EXT_TEST_VAR": 7}}))
    with caplog.at_level(logging.WARNING, logger="trl_ext.runtime"):
        applied = apply_runtime(recipe)
    assert os.environ["TRL_EXT_TEST_VAR"] == "7"
    assert applied.training.bf16 is False and applied.training.fp16 is False and applied.training.use_cpu is True
    assert applied.runtime_applied is True
    assert "No CUDA device: bf16 mixed precision is turned off" in caplog.text
    assert recipe.training.bf16 is True  # the loaded recipe itself is left as it was
    assert apply_runtime(applied) is applied


def test_runtime_keeps_mixed_precision_set_on_the_command_line(tmp_path):
    applied = apply_runtime(load_recipe(write(tmp_path, BASE), ["--bf16", "true"]))
    assert applied.training.bf16 is True


def test_runtime_rebuild_keeps_yaml_and_command_line_values(tmp_path):
    recipe = load_recipe(write(tmp_path, {**BASE, "beta": 0.3, "max_steps": 7}), ["--learning_rate", "2e-5"])
    applied = apply_runtime(recipe)
    assert (applied.training.beta, applied.training.max_steps) == (0.3, 7)
    assert applied.training.learning_rate == pytest.approx(2e-5)


def test_cli_train_reports_recipe_errors_before_launching(tmp_path):
    path = write(tmp_path, {**BASE, "lerning_rate": 1e-4})
    proc = trl_ext_cli("train", path, timeout=120)
    assert proc.returncode == 2
    assert "Did you mean 'learning_rate'?" in proc.stderr
    assert "accelerate" not in proc.stderr.lower().split("error:")[0]  # no process was launched


def test_cli_train_refuses_to_overwrite_existing_checkpoints(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-20").mkdir(parents=True)
    path = write(tmp_path, {**BASE, "output_dir": str(out)})
    proc = trl_ext_cli("train", path, timeout=120)
    assert proc.returncode == 2
    # an empty checkpoint directory is a save cut short: the refusal does not suggest resuming from it
    assert "already holds checkpoints (checkpoint-20), none of them complete" in proc.stderr
    assert "--resume_from_checkpoint" not in proc.stderr
    assert (out / "checkpoint-20").is_dir()


def test_accelerate_configs_parse_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in ("single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2"):
        cfg = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
        kinds[name] = str(cfg.distributed_type).split(".")[-1]
    assert kinds == {
        "single_gpu": "NO",
        "multi_gpu": "MULTI_GPU",
        "zero2": "DEEPSPEED",
        "zero3": "DEEPSPEED",
        "fsdp2": "FSDP",
    }


def test_trl_ext_help_lists_subcommands():
    proc = trl_ext_cli("--help", timeout=60)
    assert proc.returncode == 0
    for command in ("train", "estimate", "fisher", "merge", "eval-rewrite", "memcheck"):
        assert f"  {command}" in proc.stdout


def test_mapping_keys_still_validate_after_a_parser_was_built(tmp_path):
    # transformers' argument parser rewrites dataclass Field.type in place (dict | str | None -> str); validation of
    # the next recipe must not see that rewritten type.
    load_recipe(str(RECIPES / "quickstart" / "dpo.yaml"))
    mapping = {
        **BASE,
        "method": "grpo",
        "dataset_name": "builtin:prompts",
        "reward_funcs": ["trl_ext.rewards.keyword.KeywordReward"],
        "reward_kwargs": {"KeywordReward": {"keywords": ["river"]}},
        "model_init_kwargs": {"low_cpu_mem_usage": True},
    }
    for _ in range(2):
        recipe = load_recipe(write(tmp_path, mapping))
        assert recipe.script.reward_kwargs == {"KeywordReward": {"keywords": ["river"]}}


def test_dataset_mixture_entry_with_an_unknown_key_names_the_allowed_keys(tmp_path):
    mapping = {k: v for k, v in BASE.items() if k != "dataset_name"}
    with pytest.raises(RecipeError, match=r"'datasets' .* expects a list of a mapping with keys among path, name,"):
        load_recipe(write(tmp_path, {**mapping, "datasets": [{"path": "builtin:preferences", "splt": "train"}]}))


def test_launch_states_single_machine_defaults_only_without_accelerates_default_config(tmp_path, monkeypatch):
    from trl_ext.train import accelerate_launch_args

    default = tmp_path / "default_config.yaml"
    monkeypatch.setattr("accelerate.commands.config.default_config_file", str(default))
    tail = ["-m", "trl_ext.train", "--config", "r.yaml", "--beta", "0.2"]
    assert accelerate_launch_args("r.yaml", ["--beta", "0.2"], None, None) == [
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        *tail,
    ]
    default.write_text("compute_environment: LOCAL_MACHINE\n")
    assert accelerate_launch_args("r.yaml", ["--beta", "0.2"], None, None) == tail
    assert accelerate_launch_args("r.yaml", ["--beta", "0.2"], "a.yaml", 2) == [
        "--config_file",
        "a.yaml",
        "--num_processes",
        "2",
        *tail,
    ]


def test_cli_errors_are_one_line_with_exit_code_2(capsys):
    from trl_ext.cli import main

    assert main(["trian", "recipes/quickstart/dpo.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "trl-ext: error: unknown command 'trian'. Did you mean 'train'? Commands: "
        + ", ".join(__import__("trl_ext.cli", fromlist=["COMMANDS"]).COMMANDS)
        + "."
    )
    assert main(["estimate", "does/not/exist.yaml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-ext: error: ") and "does/not/exist.yaml" in lines[0]
