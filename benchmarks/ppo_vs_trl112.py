"""PPO CPU and wall time per rollout, profile, memory and learning curves: trl-ext's PPOTrainer vs TRL 1.12's
`trl.experimental.ppo.PPOTrainer`, with equal work on both sides.

Equal work: the same model, prompts, rule reward (1.0 when a completion mentions "river"), LoRA and PPO settings
(rollout size, PPO epochs, mini-batches, clip ranges, KL coefficient, GAE), and fixed-length completions
(`min_new_tokens == max_new_tokens`, so neither side stops early and both generate exactly the same number of tokens).
TRL 1.12 calls `gc.collect()` twice per rollout, a fixed cost of 50 % and more of its time on a tiny model that
vanishes at real sizes: `gc.collect` is made a no-op on both sides during training (calls counted), and its cost is
measured apart after training (as many calls on the final heap).

Models: `tiny` (`builtin:tiny-chat`, 0.4 M parameters, where fixed per-step costs dominate) and `small`, a config-built
Qwen2 decoder of a few million parameters with random weights (where compute dominates), in full precision (`fp32`)
and with an NF4 4-bit base (`4bit`). Learning curves (the score of every rollout) come from the tiny model, which
was trained to chat and can learn to mention the keyword, over several seeds; our side also runs at several PPO
epoch counts, which is the evidence for `PPOConfig.num_ppo_epochs`' default.

- trl-ext: actor LoRA + critic LoRA + value head on one base model; reference = adapters disabled.
- TRL 1.12: the policy with the same LoRA (reference = adapters disabled), a value model (a full sequence classifier,
  trained in full precision: TRL 1.12 applies LoRA to the policy only) and a reward model (held in memory; its
  forward is replaced by the rule).

Every phase is timed exclusively in CPU seconds of the main thread (torch runs on it alone with one thread; time
inside a nested timed phase counts for that phase only): generation, old
log-probs (TRL 1.12 takes them from the generation scores), reference, rollout values, reward, the training forward
(policy and critic), backward, optimizer step, and the rest.

TRL 1.12 runs in a virtualenv this script creates (`--venv`, default `/tmp/trl-ext-bench-trl112`): TRL 1.12's wheel
(no dependencies) over this interpreter's site-packages, so torch, transformers and peft are the same on both sides.

Usage::

    python benchmarks/ppo_vs_trl112.py [--threads 1] [--parallel 1] [--only speed|curves] [--out benchmarks/results]

Writes `ppo_vs_trl112.json` (every run) and `ppo_vs_trl112.md`. The runs hold about 5 minutes of CPU time in all
(14 runs: 5 speed runs on the compute model, 9 learning-curve runs on the tiny model), so an estimated 10 to 15
minutes one after the other on a quiet 2-core machine (not measured: this one never was); on a loaded one,
`--parallel` runs several at once (CPU seconds stay comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ppo_vs_trl112_sides import SETTINGS, run_ours, run_trl112

HERE = Path(__file__).resolve().parent
SMALL_MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4)
# speed runs: (model, precision, rollouts, seeds, variants); learning curves: our side at several PPO epoch counts.
# `ours-recompute` is our side with the old log-probabilities recomputed by a forward pass (what reading them off
# generation saves). Tiny-model speed comes from the learning-curve runs at SETTINGS["ppo_epochs"].
SPEED_RUNS = [
    ("small", "fp32", 3, (1,), ("ours", "ours-recompute", "trl112")),
    ("small", "4bit", 2, (1,), ("ours", "trl112")),
]
CURVE_RUNS = dict(model="tiny", precision="fp32", rollouts=12, seeds=(1, 2, 3), our_epochs=(1, 4))


# ------------------------------------------------------------------------------------------------------ orchestration
def ensure_venv(venv: Path) -> Path:
    """A virtualenv with TRL 1.12 over this interpreter's packages (same torch, transformers, peft); made once."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl.experimental.ppo, trl; assert trl.__version__.startswith('1.12')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    import site

    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    (site_dir,) = Path(venv, "lib").glob("python*/site-packages")
    (site_dir / "parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.*"], check=True)
    subprocess.run(probe, check=True)
    return python


def small_model(work: Path) -> str:
    """The config-built compute model: tiny-chat's tokenizer and architecture, widened and deepened, seeded."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trl_ext.assets import resolve_builtin

    tiny = Path(resolve_builtin("builtin:tiny-chat"))
    path = work / "small-model"
    if not (path / "model.safetensors").is_file():
        config = AutoConfig.from_pretrained(tiny)
        config.update(dict(SMALL_MODEL, num_key_value_heads=SMALL_MODEL["num_attention_heads"] // 2))
        config.layer_types = ["full_attention"] * config.num_hidden_layers
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            shutil.copy(tiny / name, path / name)
    return str(path)


def run_child(python: str, side: str, job: dict, args, out: Path) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRL_EXPERIMENTAL_SILENCE="1",
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        CUDA_VISIBLE_DEVICES="",
    )
    cmd = [python, __file__, "--child", side, "--job", json.dumps(job), "--child-out", str(out)]
    cmd += ["--threads", str(args.threads)]
    print(f"running {side} {job} ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} failed with exit code {proc.returncode}")
    result = json.loads(out.read_text())
    print(f"  {result['seconds_per_rollout']:.2f} s/rollout, {result['completion_tokens']} tokens", flush=True)
    return {**job, **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side (1: no OpenMP stalls)")
    parser.add_argument("--venv", default="/tmp/trl-ext-bench-trl112", help="virtualenv for TRL 1.12 (made once)")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for ppo_vs_trl112.{json,md}")
    parser.add_argument("--only", choices=["speed", "curves"], default=None, help="run one part only")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (CPU time stays fair, wall time not)")
    parser.add_argument("--child", choices=["ours", "ours-recompute", "trl112"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        job = json.loads(args.job)
        run = (job["path"], job["precision"], job["data"], job["rollouts"], job["seed"], job["epochs"], args.child_out)
        if args.child == "trl112":
            run_trl112(*run)
        else:
            run_ours(*run, recompute=args.child == "ours-recompute")
        return 0

    from trl_ext.assets import resolve_builtin

    data = str(Path(resolve_builtin("builtin:prompts")) / "train.jsonl")
    work = Path("/tmp/trl-ext-ppo-bench")
    work.mkdir(exist_ok=True)
    paths = {"tiny": resolve_builtin("builtin:tiny-chat"), "small": small_model(work)}
    python = ensure_venv(Path(args.venv))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "ppo_vs_trl112.json"
    runs = json.loads(results_path.read_text())["runs"] if args.only and results_path.is_file() else []
    started = time.time()
    todo = []
    if args.only in (None, "speed"):
        runs = [r for r in runs if r["part"] != "speed"]
        for model, precision, rollouts, seeds, variants in SPEED_RUNS:
            for seed in seeds:
                for side in variants:  # alternating, so load changes on a shared machine hit every side
                    todo.append(("speed", side, model, precision, rollouts, seed, SETTINGS["ppo_epochs"]))
    if args.only in (None, "curves"):
        runs = [r for r in runs if r["part"] != "curves"]
        c = CURVE_RUNS
        for seed in c["seeds"]:
            todo.append(("curves", "trl112", c["model"], c["precision"], c["rollouts"], seed, SETTINGS["ppo_epochs"]))
            for epochs in c["our_epochs"]:
                todo.append(("curves", "ours", c["model"], c["precision"], c["rollouts"], seed, epochs))

    def run(i, part, side, model, precision, rollouts, seed, epochs):
        job = dict(part=part, variant=side, model=model, precision=precision, rollouts=rollouts, seed=seed)
        job.update(epochs=epochs, path=paths[model], data=data)
        interpreter = str(python) if side == "trl112" else sys.executable
        return run_child(interpreter, side, job, args, work / f"{i}.json")

    # with --parallel > 1 the runs share the CPU: CPU seconds per rollout stay comparable, wall seconds do not
    with ThreadPoolExecutor(args.parallel) as pool:
        runs += list(pool.map(lambda item: run(item[0], *item[1]), enumerate(todo)))
    summary = {
        "settings": SETTINGS,
        "small_model": SMALL_MODEL,
        "threads": args.threads,
        "parallel": args.parallel,
        "minutes": (time.time() - started) / 60,
        "runs": [{k: v for k, v in r.items() if k not in ("path", "data")} for r in runs],
    }
    results_path.write_text(json.dumps(summary, indent=1))
    from ppo_vs_trl112_report import write_markdown

    write_markdown(summary, out / "ppo_vs_trl112.md")
    print((out / "ppo_vs_trl112.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
