"""Shared test helpers. Everything runs offline on the bundled tiny model and data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
TINY_MODEL = "builtin:tiny-chat"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_command(args: list[str], timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command (e.g. ``[sys.executable, "-m", "trl_ext.cli", ...]``) and return it, output captured."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=env)


def trl_ext_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", "trl_ext.cli", *args], timeout=timeout)


def free_port() -> int:
    """A free TCP port on loopback, so concurrent multi-process runs never join each other's process group."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(*args: str, num_processes: int = 1, timeout: float = 900) -> subprocess.CompletedProcess:
    """``accelerate launch`` with N CPU processes (gloo DDP when N > 1) running ``-m trl_ext.train ARGS``."""
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    if num_processes > 1:
        launch += ["--multi_gpu"]
    return run_command([*launch, "-m", "trl_ext.train", *args], timeout=timeout)


@pytest.fixture
def tiny_model_path() -> str:
    from trl_ext.assets import resolve_builtin

    return resolve_builtin(TINY_MODEL)


def recipe_copy(recipe: str | Path, directory: Path, drop: tuple[str, ...] = (), **changes) -> str:
    """Write `recipe` into `directory` with the keys of `changes` set and those in `drop` removed; return its path."""
    import yaml

    raw = yaml.safe_load(Path(recipe).read_text())
    for key in drop:
        del raw[key]
    raw.update(changes)
    path = Path(directory) / Path(recipe).name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def logged_values(trainer, key: str) -> list[float]:
    """Every value of `key` in `trainer.state.log_history`, in logging order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]


#: The smallest valid recipe: DPO on the bundled tiny model and preferences.
MINIMAL_RECIPE = {
    "method": "dpo",
    "model_name_or_path": "builtin:tiny-chat",
    "dataset_name": "builtin:preferences",
    "output_dir": "unused",
    "report_to": "none",
}


def write_recipe(tmp_path, mapping, name="r.yaml"):
    """Write `mapping` as a recipe YAML under `tmp_path` and return its path."""
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return str(path)
