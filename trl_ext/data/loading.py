"""Where a recipe's data comes from: load a dataset by name, pick a (row-sliced) split, check the method's columns.

A dataset name is ``builtin:<name>`` (bundled), a local file or folder (JSON/JSONL/CSV/Parquet) or a Hub dataset id.
A folder of data files named after their splits (``train.jsonl``, ``test.jsonl``: the bundled datasets' layout) loads
as those splits. A split may carry a row slice in ``datasets``' syntax: ``train[:32]``, ``train[10:20]``,
``train[-50:]``. Every problem is a `RecipeError` naming the dataset, the split or the column.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from trl_ext.assets import resolve_builtin
from trl_ext.recipe_validation import RecipeError

#: Dataset columns each method needs (TRL's formats: preference, unpaired preference, prompt-only).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "dpo": ("chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "grpo": ("prompt",),
    "ppo": ("prompt",),
    "sft": (),  # messages, text (dataset_text_field) or prompt + completion: TRL's SFTTrainer names what is missing
    "reward": ("chosen", "rejected"),
}

#: File suffix -> ``datasets`` builder.
DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

#: A split, optionally sliced by row (``datasets``' syntax): groups are the name, the start and the stop.
_SPLIT_SLICE = re.compile(r"^([^\[\]]+?)(?:\[(-?\d*):(-?\d*)\])?$")


def split_data_files(path: str | Path) -> tuple[str, dict[str, str]] | None:
    """The ``datasets`` builder and ``{split: file}`` of a folder holding one data file per split, named after it.

    Args:
        path (`str` or `Path`):
            A folder such as ``trl_ext/data/preferences`` (``train.jsonl``, ``test.jsonl``).

    Returns:
        `tuple[str, dict[str, str]]` or `None`: e.g. ``("json", {"test": ".../test.jsonl", "train": ...})``; None
        when ``path`` is not a folder or holds no data file.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    files = {p.stem: str(p) for p in sorted(path.iterdir()) if p.suffix in DATA_BUILDERS}
    if not files:
        return None
    return DATA_BUILDERS[Path(next(iter(files.values()))).suffix], files


def load_dataset_by_name(name: str, config: str | None = None, streaming: bool = False):
    """Load ``builtin:<name>``, a local data file or folder, or a Hub dataset, as a ``DatasetDict``.

    Args:
        name (`str`):
            ``builtin:<name>``, a local file or folder, or a Hub dataset id.
        config (`str`, *optional*):
            Dataset configuration name (``name`` of ``datasets.load_dataset``), for Hub datasets and script folders.
        streaming (`bool`, *optional*, defaults to `False`):
            Stream the dataset.

    Returns:
        `datasets.DatasetDict`: a single local file loads as its ``train`` split.
    """
    from datasets import load_dataset

    path = Path(resolve_builtin(name))
    local = split_data_files(path)
    if local is not None:
        builder, files = local
        return load_dataset(builder, data_files=files, streaming=streaming)
    if path.is_dir():
        return load_dataset(str(path), name=config, streaming=streaming)
    if path.is_file():
        if path.suffix not in DATA_BUILDERS:
            raise RecipeError(f"Dataset file {name} must be one of {', '.join(DATA_BUILDERS)}.")
        return load_dataset(DATA_BUILDERS[path.suffix], data_files={"train": str(path)}, streaming=streaming)
    return load_dataset(name, name=config, streaming=streaming)


def load_datasets(recipe):
    """The recipe's training and evaluation datasets, with the method's required columns checked.

    Reads ``dataset_name`` (or TRL's ``datasets:`` mixture), ``dataset_train_split`` and, when ``eval_strategy`` is
    not ``no``, ``dataset_test_split``. The recipe is left unchanged.

    Args:
        recipe (`trl_ext.recipe.Recipe`):
            A validated recipe.

    Returns:
        `tuple`: ``(train_dataset, eval_dataset)``; ``eval_dataset`` is None when the recipe does not evaluate.
    """
    if recipe.datasets.datasets:
        dataset = _load_mixture(recipe.datasets)
        label = ", ".join(d.path for d in recipe.datasets.datasets)
    else:
        dataset = load_dataset_by_name(
            recipe.script.dataset_name, recipe.script.dataset_config, recipe.script.dataset_streaming
        )
        label = recipe.script.dataset_name
    train_split = recipe.script.dataset_train_split
    train = select_split(dataset, train_split, label, "dataset_train_split")
    check_columns(train, recipe.method, f"{label} (split {train_split!r})")
    eval_ds = None
    if str(getattr(recipe.training, "eval_strategy", "no")) not in ("no", "IntervalStrategy.NO"):
        test_split = recipe.script.dataset_test_split
        if _split_parts(test_split, "dataset_test_split")[0] not in dataset:
            raise RecipeError(
                f"eval_strategy is {recipe.training.eval_strategy!r} but dataset {label} has no split "
                f"{test_split!r} (splits: {', '.join(dataset)}); set dataset_test_split or eval_strategy: no."
            )
        eval_ds = select_split(dataset, test_split, label, "dataset_test_split")
        check_columns(eval_ds, recipe.method, f"{label} (split {test_split!r})")
    return train, eval_ds


def _load_mixture(mixture):
    """TRL's ``get_dataset`` on a copy of the mixture whose bundled/local split folders are given as data files."""
    from trl import get_dataset

    mixture = copy.copy(mixture)
    entries = []
    for entry in mixture.datasets:
        local = split_data_files(resolve_builtin(entry.path)) if entry.data_files is None else None
        if local is not None:
            entry = copy.copy(entry)
            entry.path, entry.data_files = local
        entries.append(entry)
    mixture.datasets = entries
    return get_dataset(mixture)


def _split_parts(split: str, key: str) -> tuple[str, str | None, str | None]:
    """``train[10:20]`` -> ``("train", "10", "20")``, ``train`` -> ``("train", None, None)``; RecipeError otherwise."""
    match = _SPLIT_SLICE.match(split)
    if match is None:
        raise RecipeError(f"{key} {split!r} is not a split name or a sliced one such as 'train[:32]'.")
    return match.groups()


def select_split(dataset, split: str, label: str, key: str):
    """``dataset[split]``, where ``split`` may carry a row slice such as ``train[:32]``.

    Args:
        dataset (`datasets.DatasetDict`):
            The loaded dataset.
        split (`str`):
            A split name, optionally sliced: ``train``, ``train[:32]``, ``train[10:20]``, ``train[-50:]``.
        label (`str`):
            How errors name the dataset (as the user wrote it).
        key (`str`):
            The recipe key or option the split came from, which errors tell the user to set.

    Returns:
        `datasets.Dataset`: the split, or its selected rows.

    Raises:
        RecipeError: the split is malformed, missing, or its slice selects no rows.
    """
    name, start, stop = _split_parts(split, key)
    if name not in dataset:
        raise RecipeError(f"Dataset {label} has no split {name!r} (splits: {', '.join(dataset)}); set {key}.")
    part = dataset[name]
    if start is None:  # no slice
        return part
    rows = range(len(part))[slice(int(start) if start else None, int(stop) if stop else None)]
    if len(rows) == 0:
        raise RecipeError(f"{key} {split!r} selects no rows of {label} (split {name!r} has {len(part)}).")
    return part.select(rows)


def check_columns(dataset, method: str, label: str) -> None:
    """Raise a `RecipeError` naming the first column ``method`` needs (`REQUIRED_COLUMNS`) that ``dataset`` lacks.

    Args:
        dataset (`datasets.Dataset`):
            One split.
        method (`str`):
            ``dpo``, ``grpo``, ``kto`` or ``ppo``.
        label (`str`):
            How the error names the dataset and split.
    """
    columns = list(dataset.column_names or [])
    for col in REQUIRED_COLUMNS[method]:
        if col not in columns:
            raise RecipeError(
                f"Dataset {label} has no column {col!r}, which method {method!r} needs "
                f"(it needs {', '.join(REQUIRED_COLUMNS[method])}; found {', '.join(columns) or 'none'})."
            )
