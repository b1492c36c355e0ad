"""Where a recipe's data comes from: load a dataset by name, pick a (row-sliced) split, check the method's columns.

A dataset name is ``builtin:<name>`` (bundled), a local file or folder (JSON/JSONL/CSV/Parquet) or a Hub dataset id.
A folder of data files named after their splits (``train.jsonl``, ``test.jsonl``: the bundled datasets' layout) loads
as those splits. A split may carry a row slice in ``datasets``' syntax: ``train[:32]``, ``train[10:20]``,
``train[-50:]``. Every problem is a `RecipeError` naming the dataset, the split or the column.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from trl_ext.assets import UnknownAssetError, resolve_builtin
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


def _resolve(name: str) -> Path:
    try:
        return Path(resolve_builtin(name))
    except UnknownAssetError as err:
        raise RecipeError(str(err)) from None


def looks_local(name: str) -> bool:
    """Whether a dataset name is meant as a local path (a data-file suffix, or ``/``, ``./``, ``../``, ``~``)."""
    return Path(name).suffix in DATA_BUILDERS or name.startswith(("/", "./", "../", "~", ".\\"))


def check_data_file(path: str | Path, name: str | None = None) -> None:
    """Raise a `RecipeError` when a local data file is empty or (JSON/JSONL) holds a line that is not a JSON object.

    JSON Lines are read line by line, so the error names the line; a ``.json`` file may hold one JSON document (a
    list of rows or a mapping of columns) or JSON Lines, as ``datasets`` accepts.

    Args:
        path (`str` or `Path`):
            The file.
        name (`str`, *optional*):
            How the error names it (the dataset name as the user wrote it).
    """
    path = Path(path)
    label = name if name and name != str(path) else str(path)
    if not path.is_file():
        raise RecipeError(f"Dataset file {label} does not exist ({path.resolve()}); check dataset_name.")
    if path.suffix not in (".json", ".jsonl"):
        if path.stat().st_size == 0:
            raise RecipeError(f"Dataset file {label} is empty; it needs at least one row.")
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"Dataset file {label} is not UTF-8 text ({err.reason} at byte {err.start}).") from None
    if not text.strip():
        raise RecipeError(f"Dataset file {label} is empty; it needs at least one row (one JSON object per line).")
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # not one document: JSON Lines, checked below
        if isinstance(doc, (list, dict)):
            if not doc:
                raise RecipeError(f"Dataset file {label} holds no rows.")
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecipeError(
                f"Dataset file {label}, line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                "each line must be one JSON object."
            ) from None
        if not isinstance(row, dict):
            raise RecipeError(
                f"Dataset file {label}, line {number}: a JSON {type(row).__name__}, not an object; "
                'each line must be one JSON object such as {"prompt": ...}.'
            )


def load_dataset_by_name(name: str, config: str | None = None, streaming: bool = False):
    """Load ``builtin:<name>``, a local data file or folder, or a Hub dataset, as a ``DatasetDict``.

    Local files are checked first (`check_data_file`): a missing or empty file, or a broken JSON line, is a
    `RecipeError` naming the file (and the line); so is any error ``datasets`` raises while loading.

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

    path = _resolve(name)
    local = split_data_files(path)
    if local is not None:
        builder, files = local
        for file in files.values():
            check_data_file(file, f"{name}/{Path(file).name}")
        return _load(name, builder, data_files=files, streaming=streaming)
    if path.is_dir():
        return _load(name, str(path), name=config, streaming=streaming)
    if path.is_file():
        if path.suffix not in DATA_BUILDERS:
            raise RecipeError(f"Dataset file {name} must be one of {', '.join(DATA_BUILDERS)}.")
        check_data_file(path, name)
        return _load(name, DATA_BUILDERS[path.suffix], data_files={"train": str(path)}, streaming=streaming)
    if looks_local(name) or name.startswith("builtin:"):
        raise RecipeError(f"Dataset file {name} does not exist ({path.resolve()}); check dataset_name.")
    return _load(name, name, name=config, streaming=streaming)


def _load(label: str, *args, **kwargs):
    """``datasets.load_dataset(*args, **kwargs)``, its errors turned into one `RecipeError` naming the dataset."""
    from datasets import load_dataset

    try:
        return load_dataset(*args, **kwargs)
    except RecipeError:
        raise
    except Exception as err:  # datasets raises many types (DatasetNotFoundError, ArrowInvalid, ConnectionError...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        offline = " (offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)" if _offline() else ""
        raise RecipeError(f"Dataset {label} could not be loaded{offline}: {first}") from None


def _offline() -> bool:
    import os

    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


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
        local = split_data_files(_resolve(entry.path)) if entry.data_files is None else None
        if local is not None:
            entry = copy.copy(entry)
            entry.path, entry.data_files = local
        entries.append(entry)
    mixture.datasets = entries
    for entry in entries:
        files = entry.data_files
        for file in files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else []:
            check_data_file(file)
        if files is None and looks_local(entry.path) and not Path(entry.path).exists():
            raise RecipeError(f"Dataset {entry.path} in datasets: does not exist ({Path(entry.path).resolve()}).")
    try:
        return get_dataset(mixture)
    except RecipeError:
        raise
    except Exception as err:  # see `_load`
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RecipeError(f"The datasets: mixture could not be loaded: {first}") from None


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
