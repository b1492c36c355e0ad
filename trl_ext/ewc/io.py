"""Fisher files: safetensors, one tensor per adapted module keyed by its name in the base model.

The tensors of each mode are laid out as `trl_ext.ewc.fisher.fisher_key_shapes` says. The header metadata holds
`format`, `base_model`, `base_model_revision`, `base_model_storage`, `base_model_fingerprint`, `mode`,
`fisher_type`, `n_samples`, `n_tokens` (and `split_half_agreement`, `online_tasks`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from trl_ext.assets import DATA_DIR
from trl_ext.checkpoints import atomic_path
from trl_ext.ewc.fisher import FisherEstimate, adapted_modules, base_model_of, fisher_key_shapes
from trl_ext.recipe_validation import RecipeError

FORMAT = "trl-ext-ewc-fisher/1"


class FisherMismatchError(RecipeError):
    """A Fisher file that does not belong to this model, these target modules or this mode.

    A `RecipeError` (so a `ValueError`): the entry points report it as one `trl-ext: error:` line.
    """


def _storage(weight: torch.Tensor) -> str:
    """How a weight is stored: its dtype, plus the 4-bit format of a bitsandbytes `Params4bit` (`uint8/nf4`)."""
    dtype = str(weight.dtype).removeprefix("torch.")
    quant_type = getattr(weight, "quant_type", None)  # set on bitsandbytes 4-bit weights only
    return f"{dtype}/{quant_type}" if quant_type else dtype


def model_identity(model) -> dict[str, str]:
    """What a Fisher file records of the model it was computed on, to refuse it for another model.

    Args:
        model (`PreTrainedModel` or `PeftModel`):
            The (PEFT-wrapped, possibly DDP-wrapped) model whose adapted modules the Fisher covers.

    Returns:
        `dict[str, str]`:
            - `base_model`: `builtin:<name>` for a bundled model, an absolute path for a local one, else the Hub id.
            - `base_model_fingerprint`: SHA-256 of the adapted modules' names and shapes and of the stored bytes of
              the first, middle and last adapted base weight (packed bytes on 4-bit weights). Deterministic and
              cheap; it tells two models of the same architecture apart, such as a checkpoint overwritten in place.
            - `base_model_storage`: the dtype (and 4-bit format) of those weights: fingerprints of the same model
              stored differently (bf16 and 4-bit) differ, so they are only compared when this matches.
    """
    name = str(base_model_of(model).config.name_or_path or "")
    if name and os.path.isdir(name):
        path = Path(name).resolve()
        name = f"builtin:{path.name}" if path.parent == DATA_DIR else str(path)
    modules = adapted_modules(model)
    digest = hashlib.sha256()
    for module in modules:
        digest.update(f"{module.name}:{module.shape};".encode())
    storage = []
    for index in sorted({0, len(modules) // 2, len(modules) - 1}) if modules else []:  # first, middle, last
        weight = modules[index].layer.base_layer.weight
        storage.append(_storage(weight))
        digest.update(weight.data.contiguous().view(torch.uint8).cpu().numpy())
    return {
        "base_model": name,
        "base_model_storage": ",".join(sorted(set(storage))),
        "base_model_fingerprint": digest.hexdigest(),
    }


def save_fisher(
    path: str | os.PathLike,
    estimate: FisherEstimate,
    identity: dict[str, str],
    revision: str | None = None,
    extra: dict | None = None,
) -> str:
    """Write a Fisher estimate to a safetensors file, with what `load_fisher` checks in its header.

    Args:
        path (`str` or `os.PathLike`):
            File to write; missing parent directories are created.
        estimate (`FisherEstimate`):
            The Fisher tensors and what was measured.
        identity (`dict[str, str]`):
            The model's `model_identity`.
        revision (`str`, *optional*):
            The base model's revision (`model_revision` of the recipe).
        extra (`dict`, *optional*):
            More header entries, written as strings.

    Returns:
        `str`: the path written.
    """
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        **identity,
        "base_model_revision": revision or "",
        "mode": estimate.mode,
        "fisher_type": estimate.fisher_type,
        "n_samples": str(estimate.n_samples),
        "n_tokens": str(estimate.n_tokens),
        "split_half_agreement": "" if estimate.split_half_agreement is None else f"{estimate.split_half_agreement:.6f}",
        "online_tasks": str(estimate.extra.get("online_tasks", 1)),
    }
    metadata.update({k: str(v) for k, v in (extra or {}).items()})
    with atomic_path(path) as tmp:  # a failed write (disk full) never leaves a truncated Fisher file at `path`
        save_file({k: v.contiguous().cpu() for k, v in estimate.tensors.items()}, str(tmp), metadata=metadata)
    return str(path)


def read_fisher(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a Fisher file without checking it against a model.

    Args:
        path (`str` or `os.PathLike`):
            A file `save_fisher` wrote.

    Returns:
        `tuple[dict[str, torch.Tensor], dict[str, str]]`: the tensors and the header metadata.
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Fisher file {path} does not exist; create it with `trl-ext fisher RECIPE.yaml`.")
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if metadata.get("format") != FORMAT:
        raise FisherMismatchError(f"{path} is not a trl-ext Fisher file (format {metadata.get('format')!r}).")
    return tensors, metadata


def model_name_identity(name: str) -> str:
    """How `model_identity` names the model a recipe's ``model_name_or_path`` loads, without loading it."""
    from trl_ext.assets import resolve_builtin

    resolved = resolve_builtin(name)
    if os.path.isdir(resolved):
        path = Path(resolved).resolve()
        return f"builtin:{path.name}" if path.parent == DATA_DIR else str(path)
    return name


def check_fisher_header(path: str | os.PathLike, model_name_or_path: str, mode: str | None = None) -> None:
    """The checks of `load_fisher` that need no weights, from the file's header only: a trl-ext Fisher file, for
    this base model, in this mode. `trl_ext.train.preflight` runs them before anything loads.

    Args:
        path (`str` or `os.PathLike`):
            The recipe's ``ewc_fisher_path``.
        model_name_or_path (`str`):
            The recipe's model.
        mode (`str`, *optional*):
            The recipe's ``ewc_fisher_mode``.

    Raises:
        FisherMismatchError: naming the mismatch and the fix.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except FileNotFoundError:
        raise FisherMismatchError(
            f"Fisher file {path} does not exist; create it with `trl-ext fisher RECIPE.yaml`."
        ) from None
    except Exception as err:  # safetensors raises its own error type on a header it cannot read
        raise FisherMismatchError(f"Fisher file {path} is not a safetensors file ({err}).") from None
    if meta.get("format") != FORMAT:
        raise FisherMismatchError(f"{path} is not a trl-ext Fisher file (format {meta.get('format')!r}).")
    check_model_and_mode(path, meta, model_name_identity(model_name_or_path), mode)


def check_model_and_mode(path, meta: dict, base_model: str, mode: str | None) -> str:
    """Refuse (`FisherMismatchError`) a Fisher file whose metadata names another base model or another mode; return
    the file's mode. Shared by the header check before loading and `load_fisher`.

    Args:
        path: the Fisher file (for the message).
        meta (`dict`): its metadata.
        base_model (`str`): this model's name or path as `model_identity` records it (empty: not compared).
        mode (`str`, *optional*): the recipe's Fisher mode; any mode is accepted when `None`.
    """
    if meta.get("base_model") and base_model and meta["base_model"] != base_model:
        raise FisherMismatchError(
            f"Fisher file {path} was computed for base model {meta['base_model']!r}, but this model is "
            f"{base_model!r}; recompute it with `trl-ext fisher` on this recipe."
        )
    file_mode = meta.get("mode", "full")
    if mode is not None and file_mode != mode:
        raise FisherMismatchError(
            f"Fisher file {path} holds a {file_mode!r} Fisher but ewc_fisher_mode is {mode!r}; set "
            f"ewc_fisher_mode: {file_mode} or recompute the file."
        )
    return file_mode


def load_fisher(path, model, modules, mode: str | None = None) -> FisherEstimate:
    """Read a Fisher file and check it against `model` and its adapted `modules`.

    Raises `FisherMismatchError` naming the mismatch: another base model name or path, another mode, modules adapted
    here but missing from the file, modules in the file not adapted here, a shape difference, or other weights under
    the same name (the weight fingerprint of `model_identity`, compared when both models store those weights alike).

    Args:
        path (`str` or `os.PathLike`):
            A file `save_fisher` wrote.
        model (`PeftModel`):
            The model the Fisher is for.
        modules (`list[AdaptedModule]`):
            Its adapted modules (`adapted_modules(model)`).
        mode (`str`, *optional*):
            The Fisher mode the recipe asks for; any mode is accepted when `None`.

    Returns:
        `FisherEstimate`: the file's tensors, mode and counts.
    """
    tensors, meta = read_fisher(path)
    ident = model_identity(model)
    file_mode = check_model_and_mode(path, meta, ident["base_model"], mode)
    expected = {key for m in modules for key in fisher_key_shapes(m, file_mode)}
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"adapted here but missing from the file: {', '.join(missing[:5])}"
                + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        if extra:
            parts.append(
                f"in the file but not adapted here: {', '.join(extra[:5])}"
                + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
            )
        raise FisherMismatchError(
            f"Fisher file {path} covers other target modules ({'; '.join(parts)}). Use the same "
            "lora_target_modules as the recipe the file was computed from, or recompute it."
        )
    for m in modules:
        for key, shape in fisher_key_shapes(m, file_mode).items():
            if tuple(tensors[key].shape) != shape:
                raise FisherMismatchError(
                    f"Fisher file {path}: {key} has shape {tuple(tensors[key].shape)} but this model needs {shape} "
                    "(another model size or LoRA rank); recompute it with `trl-ext fisher`."
                )
    if (
        meta.get("base_model_fingerprint")
        and meta.get("base_model_storage") == ident["base_model_storage"]
        and meta["base_model_fingerprint"] != ident["base_model_fingerprint"]
    ):
        raise FisherMismatchError(
            f"Fisher file {path} was computed for other weights of {meta['base_model'] or 'this architecture'!r} "
            f"(weight fingerprint {meta['base_model_fingerprint'][:12]}, this model's is "
            f"{ident['base_model_fingerprint'][:12]}): the model changed since; recompute it with `trl-ext fisher`."
        )
    agreement = meta.get("split_half_agreement")
    return FisherEstimate(
        tensors=tensors,
        mode=file_mode,
        fisher_type=meta.get("fisher_type", "true"),
        n_samples=int(meta.get("n_samples", 0) or 0),
        n_tokens=int(meta.get("n_tokens", 0) or 0),
        split_half_agreement=float(agreement) if agreement else None,
        extra={"online_tasks": int(meta.get("online_tasks", 1) or 1), "metadata": meta},
    )


def combine_online(old: FisherEstimate, new: FisherEstimate, gamma: float) -> FisherEstimate:
    """Online EWC: `F = gamma * F_old + F_new`.

    Args:
        old (`FisherEstimate`):
            The previous task's Fisher.
        new (`FisherEstimate`):
            The Fisher estimated at the previous task's adapter.
        gamma (`float`):
            Decay of the previous Fisher (`ewc_gamma`).

    Returns:
        `FisherEstimate`: the sum, in `new`'s dtype, counting samples, tokens and tasks of both.
    """
    if old.mode != new.mode:
        raise FisherMismatchError(f"Online EWC needs the same mode: previous Fisher is {old.mode!r}, new {new.mode!r}.")
    tensors = {k: (gamma * old.tensors[k].float().to(v.device) + v.float()).to(v.dtype) for k, v in new.tensors.items()}
    return FisherEstimate(
        tensors=tensors,
        mode=new.mode,
        fisher_type=new.fisher_type,
        n_samples=old.n_samples + new.n_samples,
        n_tokens=old.n_tokens + new.n_tokens,
        split_half_agreement=new.split_half_agreement,
        seconds=new.seconds,
        extra={"online_tasks": old.extra.get("online_tasks", 1) + 1},
    )
