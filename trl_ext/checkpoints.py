"""Checkpoints on disk: which are complete, which to resume from, atomic writes and room for the next saves.

Ground floor: reads files (JSON, safetensors headers) and writes nothing but what it is asked to; no torch. The
trainers (resume), the entry point (the output_dir refusal, the disk check) and every file trl-ext writes itself
(Fisher files, the critic, the final adapter) use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
#: errno values that mean "the disk (or the quota, or the permissions) refused the write", not a bug.
WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
WRITE_ERRNOS.update({errno.EROFS: "read-only file system", errno.EACCES: "permission denied"})


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a `checkpoint-<step>` directory name, or `None` for any other name."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` directories of `output_dir`, in step order (`checkpoint-9` before `checkpoint-10`)."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unreadable (truncated header or data), or `None` when its size matches its header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_len <= 0 or 8 + header_len > size:
                return f"{path.name} is truncated"
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError) as err:
        return f"{path.name} is unreadable ({err})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + header_len + max(ends, default=0) != size:
        return f"{path.name} is truncated ({size} of {8 + header_len + max(ends, default=0)} bytes)"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or `None` when it is complete.

    Transformers writes `trainer_state.json` last, so a save that was interrupted (killed, disk full) lacks it or
    leaves it unreadable; the weights (and a PPO critic) must be there and of the size their header says.

    Args:
        path (`str` or `os.PathLike`):
            A `checkpoint-<step>` directory.

    Returns:
        `str` or `None`: the reason, in words, or `None`.
    """
    directory = Path(path)
    state = directory / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE}: its save was interrupted"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is unreadable: its save was interrupted"
    weights = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not weights:
        return "no model weights"
    critic = directory / "critic"
    required = [directory / name for name in ("critic/value_head.safetensors", "critic/ppo_state.json")]
    if critic.is_dir() and not all(p.is_file() for p in required):
        return "its critic/ is incomplete"
    for file in [*weights, *critic.glob("*.safetensors")]:
        if file.suffix == ".safetensors" and (problem := _safetensors_problem(file)):
            return problem
    return None


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint of `output_dir` that can be resumed from, and the newer ones skipped (with why).

    Args:
        output_dir (`str` or `os.PathLike`):
            The run's output directory.

    Returns:
        `tuple[Path | None, list[tuple[Path, str]]]`: the checkpoint (`None` when none is complete) and the
        incomplete checkpoints newer than it, newest first, each with its `checkpoint_problem`.
    """
    skipped = []
    for checkpoint in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append((checkpoint, problem))
    return None, skipped


def describe_skipped(skipped: list[tuple[Path, str]]) -> str:
    """`checkpoint-30 (no trainer_state.json ...), ...`: the skipped checkpoints, in words."""
    return ", ".join(f"{path.name} ({problem})" for path, problem in skipped)


def resolve_resume_checkpoint(output_dir: str, resume, say=print) -> str | None:
    """The checkpoint a run resumes from: `True`/`"true"` picks the newest complete one in `output_dir`.

    Incomplete checkpoints (an interrupted save) are skipped and named with the reason; an explicit path must be
    complete.

    Args:
        output_dir (`str`):
            The run's output directory.
        resume (`bool`, `str` or `None`):
            `resume_from_checkpoint` as the recipe or `Trainer.train` got it.
        say (`Callable[[str], None]`, *optional*):
            Where to report skipped checkpoints (the main process's print).

    Returns:
        `str` or `None`: the checkpoint directory, or `None` for a fresh run.

    Raises:
        ValueError: No complete checkpoint to resume from, or the given one is incomplete, with the fix.
    """
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if resume is None or resume is False:
        return None
    if resume is True:
        checkpoint, skipped = newest_complete_checkpoint(output_dir)
        if skipped:
            say(f"Skipping incomplete checkpoints: {describe_skipped(skipped)}")
        if checkpoint is None:
            found = f" ({describe_skipped(skipped)})" if skipped else ""
            raise ValueError(
                f"resume_from_checkpoint is true, but {output_dir} holds no complete checkpoint{found}. Start a fresh "
                "run: remove the incomplete checkpoints or choose another --output_dir."
            )
        return str(checkpoint)
    if not os.path.isdir(resume):
        raise ValueError(f"resume_from_checkpoint {resume} is not a directory; give a checkpoint-<step> directory.")
    problem = checkpoint_problem(resume)
    if problem is not None:
        newest, _ = newest_complete_checkpoint(Path(resume).parent)
        hint = f" The newest complete one there is {newest}." if newest is not None else ""
        raise ValueError(f"cannot resume from {resume}: {problem}.{hint}")
    return str(resume)


# ------------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path next to `path`; on success it replaces `path` in one rename.

    A reader (or a resumed run) sees the old file or the complete new one, never a half-written one; on an error the
    temporary file is removed and `path` is left as it was.

    Example:

    ```python
    with atomic_path("out/value_head.safetensors") as tmp:
        save_file(tensors, tmp)
    ```
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text`, atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def move_into(staging: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Move every entry of `staging` into `output_dir` (one rename each, replacing what is there), then remove it.

    Saving a result into `staging` (inside `output_dir`, same file system) and moving it in afterwards means a
    failed save never leaves a half-written adapter where the result belongs.
    """
    staging, output_dir = Path(staging), Path(output_dir)
    for entry in sorted(staging.iterdir()):
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


# ------------------------------------------------------------------------------------------------------ disk room
def format_bytes(n: float) -> str:
    """`1.5 GiB`-style size."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_room_problem(output_dir: str | os.PathLike, needed: int, what: str) -> str | None:
    """Why `output_dir` cannot take `needed` more bytes (not writable, too little free space), or `None`.

    Args:
        output_dir (`str` or `os.PathLike`):
            The directory (created if missing; a probe file is written and removed).
        needed (`int`):
            Bytes the run will write.
        what (`str`):
            What those bytes are, for the message (`"3 checkpoints of 12.0 MiB and the final adapter"`).
    """
    directory = Path(output_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".trl-ext-write-probe"):
            pass
    except OSError as err:
        return f"output_dir {directory} is not writable ({err.strerror or err}); choose another --output_dir."
    free = shutil.disk_usage(directory).free
    if free < needed:
        return (
            f"output_dir {directory} has {format_bytes(free)} free, but this run will write about "
            f"{format_bytes(needed)} ({what}). Free some space, set save_total_limit (or a larger save_steps), or "
            "choose another --output_dir."
        )
    return None


def write_error_message(err: OSError, output_dir: str | os.PathLike) -> str | None:
    """The message for a write that the disk refused (`ENOSPC`, quota, read-only, permissions), or `None` when
    `err` is another kind of error. It names what happened and the newest checkpoint a rerun can resume from."""
    reason = WRITE_ERRNOS.get(err.errno)
    if reason is None:
        return None
    where = err.filename or output_dir
    checkpoint, skipped = newest_complete_checkpoint(output_dir)
    message = f"writing to {where} failed: {reason}."
    if skipped:
        message += f" Incomplete checkpoints (skipped on resume): {describe_skipped(skipped)}."
    if checkpoint is not None:
        message += (
            f" The newest complete checkpoint is {checkpoint.name}: make room, then rerun with "
            "--resume_from_checkpoint true to continue from it."
        )
    else:
        message += " No complete checkpoint was written: make room, then run again."
    return message
