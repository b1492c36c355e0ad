"""Recipes and command lines copied from TRL's docs and alignment-handbook work unchanged; renamed keys are named."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import RECIPES
from trl_ext.recipe import RecipeError, load_recipe

DPO = RECIPES / "quickstart" / "dpo.yaml"


def write(tmp_path, base=DPO, **changes) -> str:
    raw = yaml.safe_load(Path(base).read_text())
    raw["output_dir"] = str(tmp_path / "out")
    raw.update(changes)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_loss_type_as_a_plain_string_is_accepted(tmp_path):
    recipe = load_recipe(write(tmp_path, loss_type="sigmoid"))
    assert recipe.training.loss_type == ["sigmoid"]


def test_trl_command_line_syntax_for_flags_and_lists(tmp_path):
    recipe = load_recipe(
        write(tmp_path),
        [
            "--no_remove_unused_columns",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--loss_type",
            "sigmoid",
            "bco_pair",
        ],
    )
    assert recipe.training.remove_unused_columns is False
    assert recipe.model.lora_target_modules == ["q_proj", "v_proj"]
    assert recipe.training.loss_type == ["sigmoid", "bco_pair"]
    assert {"remove_unused_columns", "lora_target_modules", "loss_type"} <= recipe.override_keys


def test_command_line_values_are_typed_like_yaml_values(tmp_path):
    recipe = load_recipe(
        write(tmp_path), ["--max_steps", "7", "--learning_rate", "1e-5", "--use_peft", "--output_dir", "123"]
    )
    assert (recipe.training.max_steps, recipe.training.learning_rate) == (7, 1e-5)
    assert recipe.model.use_peft is True and recipe.training.output_dir == "123"
    full = load_recipe(write(tmp_path), ["--beta=0.3", "--no_use_peft", "--no_load_in_4bit"])
    assert (full.model.use_peft, full.model.load_in_4bit, full.training.beta) == (False, False, 0.3)


def test_negative_numbers_on_the_command_line_are_values_not_flags(tmp_path):
    assert load_recipe(write(tmp_path), ["--max_steps", "-1", "--num_train_epochs", "1"]).training.max_steps == -1
    with pytest.raises(RecipeError, match=r"'lora_r' has value -4, but it must be >= 1"):
        load_recipe(write(tmp_path), ["--lora_r", "-4"])


def test_a_list_of_values_for_a_single_value_key_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"--beta takes one value, got 2: 0.1 0.2"):
        load_recipe(write(tmp_path), ["--beta", "0.1", "0.2"])


@pytest.mark.parametrize(
    ("old", "value", "new"),
    [
        ("torch_dtype", "bfloat16", "'dtype'"),
        ("dataset_mixture", [{"path": "builtin:preferences"}], "'datasets'"),
        ("dataset_mixer", {"builtin:preferences": 1.0}, "'datasets'"),
        ("max_seq_length", 128, "'max_length'"),
        ("warmup_ratio", 0.1, "'warmup_steps' \\(transformers 5 merged them"),
        ("evaluation_strategy", "no", "'eval_strategy'"),
    ],
)
def test_renamed_keys_name_their_new_key(tmp_path, old, value, new):
    with pytest.raises(RecipeError, match=rf"Unknown key '{old}'.* It was renamed: use {new}"):
        load_recipe(write(tmp_path, **{old: value}))
    with pytest.raises(RecipeError, match=rf"Unknown key '{old}' in the command-line overrides.* use {new}"):
        load_recipe(write(tmp_path), [f"--{old}", json.dumps(value)])


def test_renamed_key_targets_are_real_keys_of_trl_and_transformers():
    from trl_ext.recipe import METHODS, recipe_fields
    from trl_ext.recipe_syntax import RENAMED_KEYS

    known = set().union(*(recipe_fields(m) for m in METHODS))
    assert {new for new, _ in RENAMED_KEYS.values()} <= known
    assert not set(RENAMED_KEYS) & known  # a renamed key that still exists would never be reported


def test_building_a_recipe_raises_no_gradient_checkpointing_deprecation(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        default = load_recipe(write(tmp_path)).training  # quickstart: gradient_checkpointing false
        raw = yaml.safe_load(DPO.read_text())
        raw.pop("gradient_checkpointing")
        path = tmp_path / "d.yaml"
        path.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / "o")}))
        trl_default = load_recipe(str(path)).training
    assert default.activation_checkpointing is False and default.gradient_checkpointing is False
    assert trl_default.activation_checkpointing is True and trl_default.gradient_checkpointing is True  # TRL's default


def test_report_to_an_integration_that_is_not_installed_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr("transformers.integrations.integration_utils.get_available_reporting_integrations", lambda: [])
    with pytest.raises(RecipeError, match=r"report_to 'tensorboard' .* pip install 'trl-ext\[tensorboard\]'"):
        load_recipe(write(tmp_path, report_to="tensorboard"))
    with pytest.raises(RecipeError, match=r"report_to 'tensorbord' .* Did you mean 'tensorboard'\?"):
        load_recipe(write(tmp_path, report_to=["tensorbord"]))
    assert load_recipe(write(tmp_path, report_to="none")).training.report_to in ("none", ["none"], [])


@pytest.fixture
def model_without_template(tmp_path, tiny_model_path):
    folder = tmp_path / "plain-model"
    shutil.copytree(tiny_model_path, folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_conversational_dataset_without_a_chat_template_is_refused_up_front(tmp_path, capsys, model_without_template):
    from trl_ext.cli import main

    path = write(tmp_path, model_name_or_path=str(model_without_template))
    assert main(["check", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is conversational (role/content messages), but the tokenizer of" in err[0]
    assert "set chat_template_path" in err[0]


def test_chat_template_path_supplies_the_template(tmp_path, capsys, model_without_template, tiny_model_path):
    from trl_ext.cli import main
    from trl_ext.model_source import read_chat_template

    template = Path(tiny_model_path) / "chat_template.jinja"
    path = write(tmp_path, model_name_or_path=str(model_without_template), chat_template_path=str(template))
    assert main(["check", path]) == 0, capsys.readouterr().err
    assert read_chat_template("builtin:tiny-chat") == template.read_text()
    missing = write(tmp_path, model_name_or_path=str(model_without_template), chat_template_path="nope.jinja")
    assert main(["check", missing]) == 2
    assert "chat_template_path nope.jinja does not exist" in capsys.readouterr().err


def test_check_reports_a_ready_recipe_without_loading_anything(tmp_path, capsys):
    from trl_ext.cli import main

    assert main(["check", write(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dataset builtin:preferences: 120 training rows, columns prompt, chosen, rejected" in out
    assert "memory estimate: peak" in out and out.rstrip().endswith(")")
    assert not (tmp_path / "out").exists()
