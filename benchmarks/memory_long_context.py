"""Longest sequence on one 24 GB card (22 GiB usable): Llama-3.1-8B QLoRA r=16 all-linear, batch 1, checkpointing.

    python benchmarks/memory_long_context.py   ->   benchmarks/results/memory_long_context.json

For DPO (tokens per pair: chosen + rejected each this long) and SFT, with and without TRL's activation offloading
and the fused LM head, the longest length (multiple of 256) whose estimated allocated peak plus the CUDA constants
(`trl_ext.memory.trace.CUDA_CONSTANTS`) stays <= 22 GiB. SFT: one sequence, the loss (and the fused head) on every
position. These are estimates calibrated to CPU traces of tiny-chat and of Qwen2.5-0.5B's architecture at reduced
depth (benchmarks/memory_calibration.py), not traces of the 8B model itself.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import replace
from pathlib import Path

from trl_ext.memory import GiB, MemorySettings, estimate_settings, load_architecture
from trl_ext.memory.trace import cuda_overhead_bytes

REPO = Path(__file__).resolve().parents[1]
BUDGET = 22 * GiB


def longest(arch, s: MemorySettings) -> int:
    lo, hi = 256, 1 << 18
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        est = estimate_settings(arch, replace(s, max_length=mid), 24e9)
        if est.allocated_bytes + cuda_overhead_bytes(est.allocated_bytes) <= BUDGET:
            lo = mid
        else:
            hi = mid
    return lo


def main() -> None:
    arch = load_architecture("meta-llama/Llama-3.1-8B-Instruct")
    base = MemorySettings(method="dpo", model=arch.name, batch_size=1, optim="paged_adamw_8bit", lora_r=16)
    rows = []
    for method in ("dpo", "sft"):
        s = base if method == "dpo" else replace(base, method="sft")
        for offload in (False, True):
            for fused in (True, False):
                n = longest(arch, replace(s, activation_offloading=offload, fused_logits=fused))
                rows.append({"method": method, "activation_offloading": offload, "fused_lm_head": fused, "tokens": n})
                print(rows[-1], flush=True)
    out = REPO / "benchmarks" / "results" / "memory_long_context.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "budget_gib": 22, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
