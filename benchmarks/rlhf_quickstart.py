"""Does PPO raise the reward model's score in the RLHF quickstart? `python benchmarks/rlhf_quickstart.py`.

For each seed it runs `recipes/quickstart/rlhf.yaml` exactly as shipped (SFT -> reward -> PPO, each stage a fresh
process, `trl-ext train ... --seed S`) and reads PPO's log, one row per rollout: the reward model's mean score of the
rollout's completions (`rewards/reward/mean`) and the summed per-sequence KL to the reference, the frozen SFT adapter
(`objective/kl`). It records the mean score of the first `K` rollouts and of the last `K`, their difference (the
rise), the KL of the first and the last rollout and the wall time of the whole pipeline. It also scores the held-out
`builtin:preferences` pairs with the trained reward model, for the score range (chosen vs rejected answers). Writes
`benchmarks/results/rlhf_quickstart.{json,md}`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "quickstart" / "rlhf.yaml"
K = 6  # rollouts averaged at each end (the recipe runs 24)


def rollout_rows(ppo_dir: Path) -> list[dict]:
    """PPO's log rows that describe a rollout (score and KL)."""
    history = json.loads((ppo_dir / "trainer_state.json").read_text())["log_history"]
    return [row for row in history if "rewards/reward/mean" in row]


def rise(rows: list[dict], k: int = K) -> dict[str, float]:
    """First-k and last-k mean reward-model score of a PPO run's rollouts, their difference, and the KL at the ends."""
    scores = [row["rewards/reward/mean"] for row in rows]
    first, last = statistics.mean(scores[:k]), statistics.mean(scores[-k:])
    return {
        "rollouts": len(scores),
        f"score_first{k}": first,
        f"score_last{k}": last,
        "rise": last - first,
        "kl_first": rows[0]["objective/kl"],
        "kl_last": rows[-1]["objective/kl"],
        "kl_max": max(row["objective/kl"] for row in rows),
        "scores": scores,
        "kl": [row["objective/kl"] for row in rows],
    }


def reward_model_range(reward_dir: Path) -> dict[str, float]:
    """Mean and spread of the trained reward model's scores of the held-out chosen and rejected answers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_ext.assets import resolve_builtin

    base_path = resolve_builtin("builtin:tiny-chat")
    tokenizer = AutoTokenizer.from_pretrained(str(reward_dir))
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    model = PeftModel.from_pretrained(base, str(reward_dir)).eval()
    pairs = [json.loads(line) for line in open(Path(resolve_builtin("builtin:preferences")) / "test.jsonl")]

    def scores(key: str) -> list[float]:
        out = []
        for pair in pairs:
            text = tokenizer.apply_chat_template(pair["prompt"] + pair[key], tokenize=False)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                out.append(float(model(**ids).logits[0, 0]))
        return out

    chosen, rejected = scores("chosen"), scores("rejected")
    return {
        "rm_chosen_mean": statistics.mean(chosen),
        "rm_rejected_mean": statistics.mean(rejected),
        "rm_accuracy": statistics.mean(float(c > r) for c, r in zip(chosen, rejected)),
    }


def run_seed(seed: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "trl_ext.cli", "train", str(RECIPE), "--output_dir", str(out), "--seed", str(seed)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return {
        "seed": seed,
        "pipeline_seconds": seconds,
        **rise(rollout_rows(out / "ppo")),
        **reward_model_range(out / "reward"),
    }


def write_results(runs: list[dict], command: str, date: str | None = None) -> None:
    """Every run (JSON, per-rollout scores and KL included) and a per-seed table (Markdown)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    date = date or datetime.date.today().isoformat()
    machine = f"{platform.platform()}, {os.cpu_count()} CPU cores (shared)"
    result = {"command": command, "date": date, "machine": machine, "k": K, "runs": runs}
    (RESULTS / "rlhf_quickstart.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# RLHF quickstart: the reward model's score of PPO's completions, first vs last rollouts",
        "",
        f"`{command}` on {date}; {machine}. `recipes/quickstart/rlhf.yaml` as shipped (SFT -> reward -> PPO on the "
        f"4-bit tiny model); PPO logs one row per rollout of 32 completions. Score = the reward model's mean score "
        f"of a rollout's completions (`rewards/reward/mean`); first/last {K} = mean over the first/last {K} "
        "rollouts; KL = summed per-sequence KL to the frozen SFT reference (`objective/kl`). The reward model's "
        "held-out chosen / rejected means give the score range. Pipeline time: wall time of the three stages on "
        "the shared machine while other jobs ran (an upper bound, not a timing to compare).",
        "",
        f"| seed | score, first {K} | score, last {K} | rise | KL first | KL last | KL max | RM chosen / rejected "
        "(held-out) | pipeline time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r[f'score_first{K}']:.2f} | {r[f'score_last{K}']:.2f} | {r['rise']:+.2f} | "
            f"{r['kl_first']:.1e} | {r['kl_last']:.2f} | {r['kl_max']:.2f} | {r['rm_chosen_mean']:.2f} / "
            f"{r['rm_rejected_mean']:.2f} | {r['pipeline_seconds']:.0f} s |"
        )
    if len(runs) > 1:
        rises = [r["rise"] for r in runs]
        lines += ["", f"Rise over {len(runs)} seeds: mean {statistics.mean(rises):+.2f}, min {min(rises):+.2f}."]
    (RESULTS / "rlhf_quickstart.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the committed JSON")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((RESULTS / "rlhf_quickstart.json").read_text())
        write_results(saved["runs"], saved["command"], saved["date"])
        return 0
    command = "python benchmarks/rlhf_quickstart.py --seeds " + " ".join(map(str, args.seeds))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run_seed(seed, Path(tmp) / f"seed{seed}"))
            print({k: v for k, v in runs[-1].items() if k not in ("scores", "kl")}, flush=True)
            write_results(runs, command)  # after every seed, so an interrupted benchmark keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
