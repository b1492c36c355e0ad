"""Where a recipe's model comes from, checked before anything loads: a ``builtin:`` model, a local folder, or a Hub
id in the local cache (or a reachable Hub), and whether its tokenizer has the chat template a conversational dataset
needs.

Reads a few small files (``config.json``, ``tokenizer_config.json``) and at most opens one socket to the Hub; imports
no torch. Every problem is a `RecipeError` naming the model and the fix.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from trl_ext.assets import BUILTIN_PREFIX, UnknownAssetError, resolve_builtin
from trl_ext.recipe_validation import RecipeError

#: Files a tokenizer folder may keep its chat template in (transformers 5 writes ``chat_template.jinja``).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (to 1, true or yes)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def _hub_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    """The cached copy of ``filename`` of a Hub repo, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision if revision != "main" else None)
    except Exception:  # an id the cache cannot hold
        return None
    return found if isinstance(found, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether one TCP connection to the Hub endpoint (``HF_ENDPOINT``, default huggingface.co) opens in time."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_source(name: str, revision: str | None = None, key: str = "model_name_or_path") -> str:
    """Check that a model can be loaded without a long failure after the fact, and return where it is.

    - ``builtin:<name>``: a bundled model (a typo names the closest ones);
    - a local path: it exists and is a model folder (``config.json``);
    - a Hub id: it is well formed, and in the local cache or the Hub is reachable; offline (``HF_HUB_OFFLINE``) or
      with the Hub unreachable, an id not in the cache is refused at once, instead of five retries and a traceback.

    Args:
        name (`str`):
            The model as the recipe names it.
        revision (`str`, *optional*):
            Hub revision.
        key (`str`, *optional*, defaults to `"model_name_or_path"`):
            The recipe key or option, named in errors.

    Returns:
        `str`: the local folder, or the Hub id.

    Raises:
        RecipeError: naming the model and the fix.
    """
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{key} must name a model: builtin:tiny-chat, a local folder or a Hub id.")
    try:
        path = resolve_builtin(name)
    except UnknownAssetError as err:
        raise RecipeError(f"{key}: {err}") from None
    local = Path(path).expanduser()
    if local.exists():
        if local.is_dir() and (local / "config.json").is_file():
            return str(local)
        what = "a LoRA adapter" if (local / "adapter_config.json").is_file() else "not a model folder"
        raise RecipeError(
            f"{key} {name} is {what} (no config.json in {local}); name the folder a model was saved to "
            "(save_pretrained), a Hub id or builtin:tiny-chat."
        )
    if name.startswith(BUILTIN_PREFIX) or _looks_local(name):
        raise RecipeError(f"{key} {name} does not exist ({local.resolve()}); check the path.")
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except Exception:
        raise RecipeError(
            f"{key} {name!r} is neither an existing local folder nor a Hub id (such as Qwen/Qwen2.5-0.5B)."
        ) from None
    if _hub_file(name, "config.json", revision):
        return name
    if offline():
        raise RecipeError(
            f"{key} {name} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            f"download it first (hf download {name}) or name a local folder."
        )
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise RecipeError(
            f"{key} {name} is not a local folder and not in the Hugging Face cache, and the Hub ({endpoint}) cannot "
            "be reached: check the network, or download the model where there is one and name its folder."
        )
    return name


def read_chat_template(path: str) -> str:
    """The chat template a ``chat_template_path`` names: a Jinja/text file, or a tokenizer folder's template.

    Args:
        path (`str`):
            A file, a tokenizer folder or ``builtin:<model>``.

    Returns:
        `str`: the Jinja template.

    Raises:
        RecipeError: the path does not exist or holds no template.
    """
    try:
        resolved = Path(resolve_builtin(path)).expanduser()
    except UnknownAssetError as err:
        raise RecipeError(f"chat_template_path: {err}") from None
    if resolved.is_file():
        text = resolved.read_text(encoding="utf-8")
        if resolved.suffix == ".json":
            text = json.loads(text).get("chat_template", "")
        if text.strip():
            return text
        raise RecipeError(f"chat_template_path {path} is empty.")
    if resolved.is_dir():
        template = folder_chat_template(resolved)
        if template:
            return template
        raise RecipeError(f"chat_template_path {path} is a folder without a chat template.")
    raise RecipeError(f"chat_template_path {path} does not exist ({resolved.resolve()}).")


def folder_chat_template(folder: str | Path) -> str | None:
    """The chat template a local tokenizer folder holds (``chat_template.jinja`` or ``tokenizer_config.json``)."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            try:
                template = json.loads(file.read_text(encoding="utf-8")).get("chat_template")
            except (json.JSONDecodeError, AttributeError):
                continue
            if template:
                return template if isinstance(template, str) else json.dumps(template)
    return None


def has_chat_template(name: str, revision: str | None = None) -> bool | None:
    """Whether a model's tokenizer has a chat template: True, False, or None when its files are not here to read.

    Args:
        name (`str`):
            ``builtin:<name>``, a local folder or a Hub id (read from the local cache only).
        revision (`str`, *optional*):
            Hub revision.
    """
    local = Path(resolve_builtin(name)).expanduser()
    if local.is_dir():
        return folder_chat_template(local) is not None
    config = _hub_file(name, "tokenizer_config.json", revision)
    if config is None:
        return None
    return folder_chat_template(Path(config).parent) is not None or any(
        _hub_file(name, f, revision) for f in CHAT_TEMPLATE_FILES
    )


def check_chat_template(name: str, example: dict, chat_template_path: str | None, label: str, revision=None) -> None:
    """Refuse a conversational dataset (TRL's ``[{"role": ..., "content": ...}]`` rows) for a tokenizer without a chat
    template, unless ``chat_template_path`` gives one.

    Args:
        name (`str`):
            The model.
        example (`dict`):
            The dataset's first row.
        chat_template_path (`str`, *optional*):
            The recipe's ``chat_template_path``, checked to hold a template when set.
        label (`str`):
            How the error names the dataset.
        revision (`str`, *optional*):
            Hub revision.
    """
    if chat_template_path:
        read_chat_template(chat_template_path)
        return
    from trl.data_utils import is_conversational

    if not is_conversational(example):
        return
    if has_chat_template(name, revision) is False:
        raise RecipeError(
            f"Dataset {label} is conversational (role/content messages), but the tokenizer of {name} has no chat "
            "template: set chat_template_path to a Jinja template file (or a tokenizer folder that has one)."
        )
