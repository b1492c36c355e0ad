"""Dataset loading: names, split folders, row-sliced splits and the columns each method needs."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from conftest import MINIMAL_RECIPE, write_recipe
from trl_ext.assets import DATA_DIR
from trl_ext.data import (
    check_columns,
    load_dataset_by_name,
    load_datasets,
    select_split,
    split_data_files,
)
from trl_ext.recipe import RecipeError, load_recipe

BASE = MINIMAL_RECIPE
write = write_recipe


def numbers(n=10):
    return DatasetDict({"train": Dataset.from_dict({"x": list(range(n))})})


def test_missing_dataset_column_names_column_and_dataset(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "hello"}\n')
    recipe = load_recipe(write(tmp_path, {**BASE, "dataset_name": str(data)}))
    with pytest.raises(RecipeError) as err:
        load_datasets(recipe)
    msg = str(err.value)
    assert "no column 'rejected'" in msg and str(data) in msg and "'dpo'" in msg


def test_missing_eval_split_is_named(tmp_path):
    recipe = load_recipe(
        write(
            tmp_path,
            {**BASE, "dataset_name": "builtin:kto", "method": "kto", "eval_strategy": "steps", "eval_steps": 5},
        )
    )
    with pytest.raises(RecipeError, match=r"no split 'test' \(splits: train\)"):
        load_datasets(recipe)


def test_bundled_datasets_load_with_their_splits(tmp_path):
    recipe = load_recipe(write(tmp_path, {**BASE, "eval_strategy": "steps", "eval_steps": 5}))
    train, test = load_datasets(recipe)
    assert len(train) == 120 and len(test) == 30
    assert {"prompt", "chosen", "rejected"} <= set(train.column_names)


def test_unknown_builtin_dataset_lists_the_available_ones(tmp_path):
    recipe = load_recipe(write(tmp_path, {**BASE, "dataset_name": "builtin:nothing"}))
    with pytest.raises(ValueError, match=r"Unknown bundled asset 'builtin:nothing'.*preferences"):
        load_datasets(recipe)


@pytest.mark.parametrize(
    ("split", "rows"), [("train[:32]", 32), ("train[100:]", 20), ("train[-5:]", 5), ("train", 120)]
)
def test_train_split_may_be_a_row_slice(tmp_path, split, rows):
    recipe = load_recipe(write(tmp_path, {**BASE, "dataset_train_split": split}))
    train, _ = load_datasets(recipe)
    assert len(train) == rows


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("train[200:]", r"'train\[200:\]' selects no rows of builtin:preferences \(split 'train' has 120\)"),
        ("valid[:10]", r"no split 'valid' \(splits: .*\); set dataset_train_split"),
        ("train[::2]", r"'train\[::2\]' is not a split name or a sliced one such as 'train\[:32\]'"),
    ],
)
def test_bad_split_slice_is_named(tmp_path, split, expected):
    recipe = load_recipe(write(tmp_path, {**BASE, "dataset_train_split": split}))
    with pytest.raises(RecipeError, match=expected):
        load_datasets(recipe)


def test_malformed_eval_split_is_named_with_the_accepted_syntax(tmp_path):
    recipe = load_recipe(
        write(tmp_path, {**BASE, "eval_strategy": "steps", "eval_steps": 5, "dataset_test_split": "test[::2]"})
    )
    with pytest.raises(
        RecipeError,
        match=r"dataset_test_split 'test\[::2\]' is not a split name or a sliced one "
        r"such as 'train\[:32\]'",
    ):
        load_datasets(recipe)


def test_dataset_mixture_loads_bundled_folders_and_labels_errors_with_the_given_names(tmp_path):
    mapping = {k: v for k, v in BASE.items() if k != "dataset_name"}
    recipe = load_recipe(write(tmp_path, {**mapping, "datasets": [{"path": "builtin:preferences"}]}))
    train, _ = load_datasets(recipe)
    assert len(train) == 120
    recipe = load_recipe(write(tmp_path, {**mapping, "method": "kto", "datasets": [{"path": "builtin:preferences"}]}))
    with pytest.raises(RecipeError, match=r"Dataset builtin:preferences \(split 'train'\) has no column 'completion'"):
        load_datasets(recipe)


def test_loading_a_mixture_leaves_the_recipe_unchanged(tmp_path):
    mapping = {k: v for k, v in BASE.items() if k != "dataset_name"}
    recipe = load_recipe(write(tmp_path, {**mapping, "datasets": [{"path": "builtin:preferences"}]}))
    load_datasets(recipe)
    load_datasets(recipe)  # a second load sees the same recipe
    (entry,) = recipe.datasets.datasets
    assert (entry.path, entry.data_files) == ("builtin:preferences", None)


def test_split_folder_maps_each_file_to_the_split_it_is_named_after(tmp_path):
    builder, files = split_data_files(DATA_DIR / "preferences")
    assert builder == "json"
    assert files == {
        "test": str(DATA_DIR / "preferences" / "test.jsonl"),
        "train": str(DATA_DIR / "preferences" / "train.jsonl"),
    }
    (tmp_path / "notes.txt").write_text("not data")
    assert split_data_files(tmp_path) is None
    assert split_data_files(DATA_DIR / "preferences" / "train.jsonl") is None


def test_a_single_data_file_loads_as_the_train_split(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    dataset = load_dataset_by_name(str(data))
    assert list(dataset) == ["train"] and dataset["train"]["prompt"] == ["a", "b"]


def test_a_file_of_another_format_is_refused_with_the_accepted_suffixes(tmp_path):
    data = tmp_path / "rows.txt"
    data.write_text("a\n")
    with pytest.raises(RecipeError, match=r"rows.txt must be one of .json, .jsonl, .csv, .parquet"):
        load_dataset_by_name(str(data))


@pytest.mark.parametrize(
    ("split", "expected"),
    [("train", list(range(10))), ("train[2:5]", [2, 3, 4]), ("train[-2:]", [8, 9]), ("train[:3]", [0, 1, 2])],
)
def test_select_split_applies_the_row_slice(split, expected):
    assert select_split(numbers(), split, "numbers", "key")["x"] == expected


def test_check_columns_names_the_first_missing_column_and_what_was_found():
    with pytest.raises(
        RecipeError,
        match=r"Dataset d has no column 'completion', which method 'kto' needs "
        r"\(it needs prompt, completion, label; found prompt\)",
    ):
        check_columns(Dataset.from_dict({"prompt": ["p"]}), "kto", "d")


def test_recipe_module_still_exports_the_loading_api():
    import trl_ext.recipe

    train = trl_ext.recipe.select_split(trl_ext.recipe.load_dataset_by_name("builtin:kto"), "train[:4]", "kto", "k")
    assert len(train) == 4
