"""Where bundled data comes from: the package's data folder and the ``builtin:<name>`` names that point into it.

Recipes, the CLI and the tests name bundled models and datasets as ``builtin:tiny-chat``, ``builtin:preferences`` or a
file inside one (``builtin:query_rewrite_corpus/corpus.jsonl``), so nothing touches the network. This module imports
nothing heavy (no torch, no transformers), so anything may use it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

#: The folder that holds every bundled model and dataset (``trl_ext/data``).
DATA_DIR = Path(__file__).resolve().parent / "data"

#: Prefix of a name that points into `DATA_DIR`.
BUILTIN_PREFIX = "builtin:"


class UnknownAssetError(FileNotFoundError, ValueError):
    """A ``builtin:`` name that matches no bundled asset.

    A `ValueError` (the name is wrong); also a `FileNotFoundError`, which is what earlier releases raised.
    """


def builtin_names() -> list[str]:
    """The bundled assets, sorted: every folder of `DATA_DIR` and every packaged model (a name after ``builtin:``).

    Returns:
        `list[str]`: names such as ``"preferences"``, ``"smollm2-135m-instruct"`` and ``"tiny-chat"``.
    """
    from trl_ext.data.real_models import PACKAGED_MODELS  # stdlib only: made on first use from a PyPI package

    folders = [p.name for p in DATA_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")]
    return sorted({*folders, *PACKAGED_MODELS})


def resolve_builtin(name_or_path: str) -> str:
    """Map ``builtin:<name>`` (optionally ``builtin:<name>/<file>``) to its path in `DATA_DIR`.

    Args:
        name_or_path (`str`):
            A ``builtin:`` name, or anything else (a local path, a Hub id), which is returned unchanged.

    Returns:
        `str`: the bundled file or folder, or ``name_or_path`` itself when it does not start with ``builtin:``.

    Raises:
        UnknownAssetError: no bundled asset has that name; the message names the closest ones.
        ModelUnavailableError: a packaged model (``builtin:smollm2-135m-instruct``) is not converted yet and its
            package or the converter is missing (a `RecipeError`; the message says what to install).

    Example:
        ```python
        >>> resolve_builtin("builtin:tiny-chat").endswith("trl_ext/data/tiny-chat")
        True
        >>> resolve_builtin("Qwen/Qwen2.5-0.5B")
        'Qwen/Qwen2.5-0.5B'
        ```
    """
    if not isinstance(name_or_path, str) or not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    key = name_or_path[len(BUILTIN_PREFIX) :]
    from trl_ext.data.real_models import PACKAGED_MODELS, ensure_packaged_model  # stdlib only until it converts

    model, _, rest = key.partition("/")
    if model in PACKAGED_MODELS:  # a real model made on first use from a PyPI package (torch loads only then)
        return str(ensure_packaged_model(model) / rest) if rest else str(ensure_packaged_model(model))
    path = DATA_DIR / key
    if not path.exists():
        close = _closest_names(key)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise UnknownAssetError(
            f"Unknown bundled asset {name_or_path!r}.{hint} Bundled assets: {', '.join(builtin_names())}."
        )
    return str(path)


def _closest_names(key: str) -> list[str]:
    """Up to three ``builtin:`` names close to ``key``, compared at its first path component that does not exist."""
    parent, parts = DATA_DIR, Path(key).parts
    for depth, part in enumerate(parts):
        if not (parent / part).exists():
            siblings = sorted(p.name for p in parent.iterdir() if not p.name.startswith("_")) if parent.is_dir() else []
            siblings = builtin_names() if depth == 0 else siblings  # packaged models too (no folder here)
            prefix = BUILTIN_PREFIX + "".join(f"{p}/" for p in parts[:depth])
            return [prefix + name for name in difflib.get_close_matches(part, siblings, n=3, cutoff=0.6)]
        parent = parent / part
    return []
