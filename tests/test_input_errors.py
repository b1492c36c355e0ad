"""Bad input ends in one line `trl-ext: error: ...` (exit code 2) before any weight loads, never in a traceback.

Most cases run `trl-ext check` in-process: it runs exactly the checks `trl-ext train` runs before it starts a
training process (`trl_ext.train.preflight`), so it proves the same thing without loading anything.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import RECIPES, TINY_MODEL, run_command, trl_ext_cli
from trl_ext.recipe import RecipeError, load_recipe

DPO = RECIPES / "quickstart" / "dpo.yaml"
GRPO = RECIPES / "quickstart" / "grpo.yaml"


def recipe(tmp_path, base=DPO, drop=(), **changes) -> str:
    raw = yaml.safe_load(Path(base).read_text())
    for key in drop:
        raw.pop(key)
    raw.setdefault("output_dir", "out")
    raw["output_dir"] = str(tmp_path / "out")
    raw.update(changes)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def one_error_line(capsys, *argv) -> str:
    """Run `trl-ext ARGV` in-process; assert exit code 2 and exactly one `trl-ext: error:` line; return it."""
    from trl_ext.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("trl-ext: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lora_r", -4, "'lora_r' has value -4, but it must be >= 1"),
        ("learning_rate", -1.0e-5, "'learning_rate' has value -1e-05, but it must be >= 0"),
        ("per_device_train_batch_size", 0, "'per_device_train_batch_size' has value 0, but it must be >= 1"),
        ("lora_dropout", 1.5, "'lora_dropout' has value 1.5, but it must be >= 0 and < 1"),
        ("max_steps", 0, "'max_steps' has value 0, but it must be >= 1 (or -1)"),
        ("beta", float("nan"), "'beta' has value nan, but it must be >= 0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key_and_the_range(tmp_path, capsys, key, value, expected):
    assert expected in one_error_line(capsys, "check", recipe(tmp_path, **{key: value}))
    assert not (tmp_path / "out").exists()


def test_every_range_key_is_a_key_of_some_method():
    from trl_ext.recipe import METHODS, recipe_fields
    from trl_ext.recipe_validation import VALUE_RANGES

    known = set().union(*(recipe_fields(m) for m in METHODS))
    assert sorted(set(VALUE_RANGES) - known) == []


def test_missing_dataset_file_is_named(tmp_path, capsys):
    line = one_error_line(capsys, "check", recipe(tmp_path, dataset_name=str(tmp_path / "pairs.jsonl")))
    assert f"Dataset file {tmp_path / 'pairs.jsonl'} does not exist" in line


def test_empty_jsonl_is_named_instead_of_a_bare_stop_iteration(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n")
    assert "is empty; it needs at least one row" in one_error_line(
        capsys, "check", recipe(tmp_path, dataset_name=str(data))
    )


def test_corrupted_jsonl_line_is_named_by_file_and_line_number(tmp_path, capsys):
    rows = (Path(__file__).parents[1] / "trl_ext/data/preferences/train.jsonl").read_text().splitlines()[:5]
    rows[2] = rows[2][: len(rows[2]) // 2]  # a line cut in the middle
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(rows) + "\n")
    line = one_error_line(capsys, "check", recipe(tmp_path, dataset_name=str(data)))
    assert f"Dataset file {data}, line 3: not valid JSON" in line


def test_dataset_rows_that_are_not_objects_are_named(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n[1, 2]\n')
    assert "line 2: a JSON list, not an object" in one_error_line(
        capsys, "check", recipe(tmp_path, dataset_name=str(data))
    )


def test_model_path_that_does_not_exist_is_named(tmp_path, capsys):
    line = one_error_line(capsys, "check", recipe(tmp_path, model_name_or_path=str(tmp_path / "no-model")))
    assert f"model_name_or_path {tmp_path / 'no-model'} does not exist" in line


def test_hub_model_not_in_the_cache_offline_is_refused_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_error_line(capsys, "check", recipe(tmp_path, model_name_or_path="no-such-org/no-such-model"))
    assert "not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in line


def test_unreachable_hub_is_said_once_without_retries(tmp_path, capsys, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    line = one_error_line(capsys, "check", recipe(tmp_path, model_name_or_path="no-such-org/no-such-model"))
    assert f"the Hub (http://127.0.0.1:{port}) cannot be reached" in line
    assert time.monotonic() - start < 30


def test_a_folder_that_is_not_a_model_is_named(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    line = one_error_line(capsys, "check", recipe(tmp_path, model_name_or_path=str(tmp_path / "adapter")))
    assert "is a LoRA adapter (no config.json" in line


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("model_name_or_path", "builtin:tiny-caht", "Did you mean builtin:tiny-chat?"),
        ("dataset_name", "builtin:preferenses", "Did you mean builtin:preferences?"),
    ],
)
def test_builtin_typo_suggests_the_bundled_name(tmp_path, capsys, key, value, expected):
    assert expected in one_error_line(capsys, "check", recipe(tmp_path, **{key: value}))


def test_reward_kwargs_the_constructor_does_not_take_are_named(tmp_path, capsys):
    path = recipe(tmp_path, base=GRPO, reward_kwargs={"KeywordReward": {"keyword": ["river"]}})
    line = one_error_line(capsys, "check", path)
    assert "reward_kwargs['KeywordReward']" in line and "do not fit KeywordReward(keywords" in line
    assert "unexpected keyword argument 'keyword'" in line


def test_reward_kwargs_for_no_reward_entry_are_named(tmp_path, capsys):
    path = recipe(tmp_path, base=GRPO, reward_kwargs={"KeywrdReward": {"keywords": ["river"]}})
    assert "reward_kwargs key 'KeywrdReward'" in one_error_line(capsys, "check", path)


def test_method_in_capitals_suggests_the_method(tmp_path, capsys):
    assert "Unknown method 'DPO'" in one_error_line(capsys, "check", recipe(tmp_path, method="DPO"))
    assert "Did you mean 'dpo'?" in one_error_line(capsys, "check", recipe(tmp_path, method="DPO"))


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = one_error_line(capsys, "check", recipe(tmp_path), "--output_dir", str(tmp_path / "file"))
    assert "is a file, not a directory" in line
    line = one_error_line(capsys, "check", recipe(tmp_path), "--output_dir", str(tmp_path / "file" / "run"))
    assert "which is a file" in line


def test_read_only_output_dir_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through file modes; /sys is read-only to every process
        target = "/sys/trl-ext-test-run"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = str(tmp_path / "ro" / "run")
    line = one_error_line(capsys, "check", recipe(tmp_path), "--output_dir", target)
    assert f"output_dir {target} is not writable" in line
    assert not Path(target).exists()


def test_fisher_mismatch_is_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    from trl_ext import train
    from trl_ext.ewc.io import FisherMismatchError

    def mismatch(recipe):
        raise FisherMismatchError("fisher.safetensors was computed for another model (abc), this model is def.")

    monkeypatch.setattr(train, "run", mismatch)
    assert train.main(["--config", recipe(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trl-ext: error: fisher.safetensors was computed for another model (abc), this model is def."]


def test_fisher_file_for_another_model_is_refused_before_loading(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from trl_ext.ewc.io import FORMAT

    fisher = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(1)}, str(fisher), metadata={"format": FORMAT, "base_model": "Qwen/Qwen2.5-7B"})
    path = recipe(tmp_path, base=RECIPES / "quickstart" / "dpo-ewc.yaml", ewc_fisher_path=str(fisher))
    line = one_error_line(capsys, "check", path)
    assert f"Fisher file {fisher} was computed for base model 'Qwen/Qwen2.5-7B', but this model is " in line
    assert "'builtin:tiny-chat'; recompute it with `trl-ext fisher`" in line
    fisher.write_bytes(b"not a safetensors file")
    assert "is not a safetensors file" in one_error_line(capsys, "check", path)


def test_missing_fisher_file_is_refused_up_front(tmp_path, capsys):
    path = recipe(tmp_path, base=RECIPES / "quickstart" / "dpo-ewc.yaml", ewc_fisher_path=str(tmp_path / "f.st"))
    line = one_error_line(capsys, "check", path)
    assert str(tmp_path / "f.st") in line and "trl-ext fisher RECIPE.yaml" in line


def test_fisher_command_refuses_a_missing_model_before_loading(tmp_path, capsys):
    path = recipe(tmp_path, base=RECIPES / "quickstart" / "dpo-ewc.yaml")
    out = str(tmp_path / "f.safetensors")
    line = one_error_line(capsys, "fisher", path, "--model_name_or_path", str(tmp_path / "nope"), "--output", out)
    assert f"model_name_or_path {tmp_path / 'nope'} does not exist" in line


def test_wrong_typed_override_is_one_line_without_the_usage(tmp_path, capsys):
    line = one_error_line(capsys, "check", recipe(tmp_path), "--learning_rate", "fast")
    assert line == "trl-ext: error: --learning_rate fast: dpo expects float."


def test_checkpoint_refusal_lists_checkpoints_in_numeric_order(tmp_path, capsys):
    for step in (5, 40, 10, 100):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
    line = one_error_line(capsys, "check", recipe(tmp_path))
    assert "(checkpoint-10, checkpoint-40, checkpoint-100)" in line


def test_merge_errors_are_one_line(tmp_path, capsys):
    line = one_error_line(capsys, "merge", str(tmp_path / "none"), "--output", str(tmp_path / "m"))
    assert "has no adapter_config.json" in line
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "./gone/model"}))
    line = one_error_line(capsys, "merge", str(adapter), "--output", str(tmp_path / "m"))
    assert "the base of" in line and "./gone/model does not exist" in line
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "is not empty" in one_error_line(capsys, "merge", str(adapter), "--output", str(tmp_path / "full"))


def test_eval_rewrite_errors_are_one_line(tmp_path, capsys):
    line = one_error_line(capsys, "eval-rewrite", "--model", str(tmp_path / "no-model"), "--limit", "2")
    assert f"--model {tmp_path / 'no-model'} does not exist" in line
    line = one_error_line(capsys, "eval-rewrite", "--rewrites", str(tmp_path / "none.jsonl"))
    assert "none.jsonl" in line


def test_train_reports_a_missing_dataset_as_one_line_before_launching(tmp_path):
    result = trl_ext_cli("train", recipe(tmp_path, dataset_name=str(tmp_path / "gone.jsonl")), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trl-ext: error: Dataset file {tmp_path / 'gone.jsonl'} does not exist ({tmp_path / 'gone.jsonl'}); "
        "check dataset_name."
    ]
    assert not (tmp_path / "out").exists()


def test_the_adapter_records_the_builtin_model_name_not_a_local_path(tmp_path):
    from peft import get_peft_model

    from trl_ext.adapters import record_builtin_base
    from trl_ext.modeling import get_peft_config, load_model

    args = load_recipe(recipe(tmp_path)).model
    model = get_peft_model(load_model(args), get_peft_config(args))
    model.save_pretrained(tmp_path / "adapter")
    assert record_builtin_base(str(tmp_path / "adapter"), TINY_MODEL)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_MODEL
    assert not record_builtin_base(str(tmp_path / "adapter"), "Qwen/Qwen2.5-0.5B")  # only the bundled base


def test_recipe_error_from_load_recipe_is_a_value_error():
    with pytest.raises(ValueError):
        raise RecipeError("x")


@pytest.mark.slow
def test_quickstart_output_is_quiet_and_its_adapter_merges(tmp_path):
    """The three known-benign messages are gone from a real run's stderr; the adapter names builtin:tiny-chat and
    `trl-ext merge` folds it into the bundled base."""
    out = tmp_path / "run"
    result = trl_ext_cli(
        "train", str(DPO), "--output_dir", str(out), "--max_steps", "4", "--save_strategy", "steps",
        "--save_steps", "2", "--logging_steps", "2", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for message in (
        "Failed to load CPU gemm_4bit_forward",
        "`gradient_checkpointing` is deprecated",
        "`is_gradient_checkpointing` is deprecated",
        "`--mixed_precision` was set to a value of",
    ):
        assert message not in result.stderr
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_MODEL
    merged = run_command([sys.executable, "-m", "trl_ext.cli", "merge", str(out), "--output", str(tmp_path / "m")])
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert (tmp_path / "m" / "config.json").is_file()
    shutil.rmtree(tmp_path / "m")
