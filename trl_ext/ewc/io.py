"""Fisher files: safetensors, one tensor per adapted module keyed by its name in the base model.

Full mode: ``<module>`` of shape (out_features, in_features). kfac: ``<module>.kfac_out`` (out,) and
``<module>.kfac_in`` (in,). lora_params: ``<module>.lora_A`` and ``<module>.lora_B``. The header metadata holds
``format``, ``base_model``, ``base_model_revision``, ``base_model_commit``, ``mode``, ``fisher_type``, ``n_samples``,
``n_tokens`` (and ``split_half_agreement``, ``online_tasks``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trl_ext.ewc.fisher import FisherEstimate, fisher_keys

FORMAT = "trl-ext-ewc-fisher/1"


class FisherMismatchError(ValueError):
    """A Fisher file that does not belong to this model, these target modules or this mode."""


def model_identity(model) -> dict[str, str]:
    """``base_model`` (``builtin:<name>`` for a bundled model, an absolute path for a local one, else the Hub id)
    and ``base_model_commit`` (the Hub commit, when known) of a (PEFT-wrapped) model."""
    from trl_ext.ewc.fisher import base_model_of
    from trl_ext.assets import DATA_DIR

    config = base_model_of(model).config
    name = str(getattr(config, "_name_or_path", "") or "")
    if name and os.path.isdir(name):
        path = Path(name).resolve()
        name = f"builtin:{path.name}" if path.parent == DATA_DIR else str(path)
    return {"base_model": name, "base_model_commit": str(getattr(config, "_commit_hash", None) or "")}


def save_fisher(path: str | os.PathLike, estimate: FisherEstimate, identity: dict[str, str],
                revision: str | None = None, extra: dict | None = None) -> str:
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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in estimate.tensors.items()}, str(path), metadata=metadata)
    return str(path)


def read_fisher(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Fisher file {path} does not exist; create it with `trl-ext fisher RECIPE.yaml`.")
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if metadata.get("format") != FORMAT:
        raise FisherMismatchError(f"{path} is not a trl-ext Fisher file (format {metadata.get('format')!r}).")
    return tensors, metadata


def load_fisher(path, model, modules, mode: str | None = None) -> FisherEstimate:
    """Read a Fisher file and check it against ``model`` and its adapted ``modules``.

    Raises :class:`FisherMismatchError` naming the mismatch: another base model (or commit), another mode, modules
    adapted here but missing from the file, modules in the file not adapted here, or a shape difference.
    """
    tensors, meta = read_fisher(path)
    ident = model_identity(model)
    if meta.get("base_model") and ident["base_model"] and meta["base_model"] != ident["base_model"]:
        raise FisherMismatchError(
            f"Fisher file {path} was computed for base model {meta['base_model']!r}, but this model is "
            f"{ident['base_model']!r}; recompute it with `trl-ext fisher` on this recipe."
        )
    if meta.get("base_model_commit") and ident["base_model_commit"] and \
            meta["base_model_commit"] != ident["base_model_commit"]:
        raise FisherMismatchError(
            f"Fisher file {path} was computed for commit {meta['base_model_commit']} of {meta['base_model']}, but "
            f"this model is commit {ident['base_model_commit']}; recompute it with `trl-ext fisher`."
        )
    file_mode = meta.get("mode", "full")
    if mode is not None and file_mode != mode:
        raise FisherMismatchError(
            f"Fisher file {path} holds a {file_mode!r} Fisher but ewc_fisher_mode is {mode!r}; set "
            f"ewc_fisher_mode: {file_mode} or recompute the file."
        )
    expected = {k for m in modules for k in fisher_keys(m.name, file_mode)}
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"adapted here but missing from the file: {', '.join(missing[:5])}"
                         + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        if extra:
            parts.append(f"in the file but not adapted here: {', '.join(extra[:5])}"
                         + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""))
        raise FisherMismatchError(
            f"Fisher file {path} covers other target modules ({'; '.join(parts)}). Use the same "
            "lora_target_modules as the recipe the file was computed from, or recompute it."
        )
    for m in modules:
        out_f, in_f = m.shape
        want = {"full": {m.name: (out_f, in_f)},
                "kfac": {f"{m.name}.kfac_out": (out_f,), f"{m.name}.kfac_in": (in_f,)},
                "lora_params": {f"{m.name}.lora_A": tuple(m.lora_A.shape), f"{m.name}.lora_B": tuple(m.lora_B.shape)},
                }[file_mode]
        for key, shape in want.items():
            if tuple(tensors[key].shape) != shape:
                raise FisherMismatchError(
                    f"Fisher file {path}: {key} has shape {tuple(tensors[key].shape)} but this model needs {shape} "
                    "(another model size or LoRA rank); recompute it with `trl-ext fisher`."
                )
    agreement = meta.get("split_half_agreement")
    return FisherEstimate(tensors=tensors, mode=file_mode, fisher_type=meta.get("fisher_type", "true"),
                          n_samples=int(meta.get("n_samples", 0) or 0), n_tokens=int(meta.get("n_tokens", 0) or 0),
                          split_half_agreement=float(agreement) if agreement else None,
                          extra={"online_tasks": int(meta.get("online_tasks", 1) or 1), "metadata": meta})


def combine_online(old: FisherEstimate, new: FisherEstimate, gamma: float) -> FisherEstimate:
    """Online EWC: ``F = gamma * F_old + F_new``."""
    if old.mode != new.mode:
        raise FisherMismatchError(f"Online EWC needs the same mode: previous Fisher is {old.mode!r}, new {new.mode!r}.")
    tensors = {k: (gamma * old.tensors[k].float().to(v.device) + v.float()).to(v.dtype) for k, v in new.tensors.items()}
    return FisherEstimate(tensors=tensors, mode=new.mode, fisher_type=new.fisher_type,
                          n_samples=old.n_samples + new.n_samples, n_tokens=old.n_tokens + new.n_tokens,
                          split_half_agreement=new.split_half_agreement, seconds=new.seconds,
                          extra={"online_tasks": old.extra.get("online_tasks", 1) + 1})
