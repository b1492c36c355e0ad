"""Memory of one training step of SmolLM2-135M-Instruct: the CPU trace next to the estimator's figure.

Runs ``trl-ext memcheck recipes/quickstart/dpo.yaml --device cpu --json --steps 1`` with the real model's architecture
(``--model_name_or_path builtin:smollm2-135m-instruct``; memcheck builds random weights from its ``config.json``),
batch 4 and max_length 128, QLoRA as the recipe ships it (4-bit NF4, LoRA r=16 all-linear), and writes the result to
``benchmarks/results/real_model.json`` under ``memory`` (``traced_peak_gib`` is the live-tensor peak of the step,
``estimated_peak_gib`` the estimator's allocated peak for the same settings, ``estimate_ratio`` their ratio).

    python benchmarks/real_model_memory.py          # ~2 min on the shared 2-core CPU
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "real_model.json"
ARGS = [
    "recipes/quickstart/dpo.yaml", "--device", "cpu", "--json", "--steps", "1",
    "--model_name_or_path", "builtin:smollm2-135m-instruct", "--per_device_train_batch_size", "4",
    "--max_length", "128",
]  # fmt: skip


def main() -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "trl_ext.cli", "memcheck", *ARGS], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        return proc.returncode
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    result["command"] = "trl-ext memcheck " + " ".join(ARGS)
    result["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    with open(Path(tempfile.gettempdir()) / f"{OUT.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(OUT.read_text()) if OUT.is_file() else {}
        summary["memory"] = result
        OUT.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
