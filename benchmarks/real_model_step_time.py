"""Seconds per optimizer step of SmolLM2-135M-Instruct on this machine: LoRA on the unquantized base vs 4-bit.

Each probe builds the trainer through the recipe path (``trl_ext.train.build_trainer``) and times 3 optimizer steps:
LoRA r=16 all-linear, batch 4; DPO on ``builtin:counterfacts`` and SFT on ``builtin:instructions`` at max_length 128,
GRPO on ``builtin:query_rewrite_en`` with 4 generations of 24 tokens and the composite query-rewrite reward. Each
probe runs in its own process; results go to ``benchmarks/results/real_model.json`` under ``timing``. On a shared
CPU the seconds are only comparable within one run (ratios).

    OMP_NUM_THREADS=1 python benchmarks/real_model_step_time.py dpo:fp32 dpo:4bit sft:fp32 grpo:fp32
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "real_model.json"
COMMON = [
    "--model_name_or_path", "builtin:smollm2-135m-instruct", "--use_peft", "true", "--lora_r", "16",
    "--lora_alpha", "32", "--lora_dropout", "0.0", "--lora_target_modules", "all-linear",
    "--per_device_train_batch_size", "4", "--gradient_checkpointing", "false", "--logging_steps", "1",
    "--save_strategy", "no", "--report_to", "none", "--max_steps", "3", "--learning_rate", "1e-4",
]  # fmt: skip
METHODS = {
    "dpo": ["--method", "dpo", "--dataset_name", "builtin:counterfacts", "--max_length", "128"],
    "sft": ["--method", "sft", "--dataset_name", "builtin:instructions", "--max_length", "128"],
    "grpo": [
        "--method", "grpo", "--dataset_name", "builtin:query_rewrite_en", "--num_generations", "4",
        "--max_completion_length", "24", "--beta", "0.0",
        "--reward_funcs", "trl_ext.rewards.query_rewrite.QueryRewriteReward", "--reward_kwargs",
        '{"QueryRewriteReward": {"corpus": "builtin:query_rewrite_en_corpus/corpus.jsonl"}}',
    ],
}  # fmt: skip
QUANT = {"fp32": [], "4bit": ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"]}


def probe(method: str, quant: str) -> dict:
    """Build the trainer and time its 3 optimizer steps (in this process)."""
    import torch
    from transformers import TrainerCallback

    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    out_dir = ["--output_dir", f"/tmp/trl-ext-step-time/{method}-{quant}"]
    recipe = load_recipe(None, COMMON + METHODS[method] + QUANT[quant] + out_dir)
    timer = Timer()
    t0 = time.perf_counter()
    trainer = build_trainer(recipe, callbacks=[timer])
    build = time.perf_counter() - t0
    trainer.train()
    return {"build_seconds": build, "step_seconds": timer.times, "threads": torch.get_num_threads()}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--probe"]:
        print("PROBE " + json.dumps(probe(*argv[1].split(":"))), flush=True)
        return 0
    for spec in argv or ["dpo:fp32", "dpo:4bit"]:
        proc = subprocess.run([sys.executable, __file__, "--probe", spec], capture_output=True, text=True, cwd=ROOT)
        line = [s for s in proc.stdout.splitlines() if s.startswith("PROBE ")]
        if not line:
            sys.stderr.write(proc.stderr[-3000:])
            return 1
        result = json.loads(line[0][6:]) | {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
        with open(Path(tempfile.gettempdir()) / f"{OUT.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            summary = json.loads(OUT.read_text()) if OUT.is_file() else {}
            summary.setdefault("timing", {})[spec] = result
            OUT.write_text(json.dumps(summary, indent=2) + "\n")
        print(spec, json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
