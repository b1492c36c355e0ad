"""PPO throughput, memory and learning curve: trl-ext's PPOTrainer vs TRL 1.12's ``trl.experimental.ppo.PPOTrainer``.

Both sides run the same tiny model (``builtin:tiny-chat``), prompts (``builtin:prompts``), rule reward (1.0 when a
completion mentions "river", 1.0 subtracted without EOS), LoRA policy and PPO settings (rollout batch, PPO epochs,
mini-batches, KL coefficient, clip ranges, GAE γ/λ, completion length). Each side runs in its own process, one after
the other (alternating, ``--repeats`` times), with the same number of threads:

- trl-ext: actor LoRA + critic LoRA + value head on one base model; reference = adapters disabled.
- TRL 1.12: the policy with the same LoRA (reference = adapters disabled), plus a separate value model and a separate
  reward model (sequence classifiers), as TRL 1.12 requires. Its reward model is scored by the same rule (TRL 1.12 only
  takes a reward model, so the rule replaces that model's forward; it is still held in memory).

TRL 1.12 lives in a virtualenv this script creates (``--venv``, default ``/tmp/trl-ext-bench-trl112``) with the same
torch and transformers as the running interpreter; rerunning reuses it.

Usage::

    python benchmarks/ppo_vs_trl112.py [--rollouts 24] [--repeats 3] [--threads 1] [--out benchmarks/results]

Writes ``ppo_vs_trl112.json`` and ``ppo_vs_trl112.md``: completion tokens/s of each side and their ratio, peak RSS of
each process, and the mean score of every rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYWORD = "river"
SETTINGS = dict(
    batch=16,  # completions per rollout (one per prompt)
    ppo_epochs=4,
    mini_batches=2,  # optimizer steps per PPO epoch
    max_new_tokens=24,
    temperature=1.0,
    learning_rate=1e-3,
    kl_coef=0.05,
    missing_eos_penalty=1.0,
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    gamma=1.0,
    lam=0.95,
    lora_r=16,
    lora_alpha=32,
    seed=42,
)


# ----------------------------------------------------------------------------------------------------------- shared
def first_eos_length(ids, eos_id: int) -> int:
    """Completion length up to and including the first EOS (the whole row when there is none)."""
    ids = list(ids)
    return ids.index(eos_id) + 1 if eos_id in ids else len(ids)


class Recorder:
    """Collects completion token counts and per-rollout mean scores; both sides feed it the same way."""

    def __init__(self):
        self.tokens = 0
        self.scores: list[float] = []

    def record(self, completion_token_ids: list[list[int]], texts: list[str], eos_id: int) -> list[float]:
        self.tokens += sum(first_eos_length(ids, eos_id) for ids in completion_token_ids)
        rewards = [1.0 if KEYWORD in t.lower() else 0.0 for t in texts]
        self.scores.append(sum(rewards) / len(rewards))
        return rewards


def lora_config(task_type):
    from peft import LoraConfig

    return LoraConfig(
        r=SETTINGS["lora_r"],
        lora_alpha=SETTINGS["lora_alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type=task_type,
    )


def load_prompts(data_path: str) -> list[list[dict]]:
    with open(data_path, encoding="utf-8") as fh:
        return [json.loads(line)["prompt"] for line in fh if line.strip()]


def weights_mib(*modules) -> float:
    """Bytes of the distinct parameter tensors held by ``modules`` (shared tensors counted once), in MiB."""
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total / 2**20


def finish(side: str, rec: Recorder, seconds: float, out: str, weights: float, n_models: int) -> None:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = dict(
        side=side,
        seconds=seconds,
        completion_tokens=rec.tokens,
        tokens_per_s=rec.tokens / seconds,
        peak_rss_mib=peak_kb / 1024,
        weights_mib=weights,
        base_models_held=n_models,
        scores=rec.scores,
    )
    Path(out).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------- trl-ext
def run_ours(model_path: str, data_path: str, rollouts: int, out: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.trainers.ppo import PPOConfig, PPOTrainer

    s = SETTINGS
    tok = AutoTokenizer.from_pretrained(model_path)
    rec = Recorder()

    def keyword_reward(prompts, completions, completion_ids, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return rec.record(completion_ids, texts, tok.eos_token_id)

    args = PPOConfig(
        output_dir=str(Path(out).parent / "ours-run"),
        per_device_train_batch_size=s["batch"] // s["mini_batches"],
        num_mini_batches=s["mini_batches"],
        num_ppo_epochs=s["ppo_epochs"],
        max_steps=rollouts * s["ppo_epochs"] * s["mini_batches"],
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        kl_coef=s["kl_coef"],
        missing_eos_penalty=s["missing_eos_penalty"],
        epsilon=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=s["seed"],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,  # TRL 1.12's default; GRPOConfig's is True
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    trainer = PPOTrainer(
        model=model,
        reward_funcs=[keyword_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": load_prompts(data_path)}),
        processing_class=tok,
        peft_config=lora_config("CAUSAL_LM"),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    finish("trl-ext", rec, seconds, out, weights_mib(trainer.model, trainer.ref_model), 1)


# -------------------------------------------------------------------------------------------------------- TRL 1.12
def run_trl112(model_path: str, data_path: str, rollouts: int, out: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    s = SETTINGS
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    rec = Recorder()
    prompts = load_prompts(data_path)
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
    ids = [x["input_ids"] if isinstance(x, dict) else list(x) for x in ids]
    dataset = Dataset.from_dict({"input_ids": ids})

    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
    for m in (policy, value_model, reward_model):
        m.config.pad_token_id = tok.pad_token_id

    original_get_reward = ppo_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is not reward_model:  # the value model: TRL's own code path
            return original_get_reward(model, query_responses, pad_token_id, context_length)
        responses = query_responses[:, context_length:].tolist()
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        rewards = rec.record(responses, texts, tok.eos_token_id)
        scores = torch.tensor(rewards, device=query_responses.device)
        return None, scores, None

    ppo_module.get_reward = get_reward
    args = PPOConfig(
        output_dir=str(Path(out).parent / "trl112-run"),
        per_device_train_batch_size=s["batch"],
        gradient_accumulation_steps=1,
        num_mini_batches=s["mini_batches"],
        num_ppo_epochs=s["ppo_epochs"],
        total_episodes=rollouts * s["batch"],
        local_rollout_forward_batch_size=s["batch"],
        response_length=s["max_new_tokens"],
        temperature=s["temperature"],
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        kl_coef=s["kl_coef"],
        missing_eos_penalty=s["missing_eos_penalty"],
        stop_token="eos",
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=s["seed"],
        use_cpu=True,
        bf16=False,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        peft_config=lora_config("CAUSAL_LM"),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    held = [trainer.model, trainer.ref_model, reward_model]
    finish("trl-1.12", rec, seconds, out, weights_mib(*held), 3 + (trainer.ref_model is not None))


# ------------------------------------------------------------------------------------------------------ orchestration
def ensure_venv(venv: Path) -> Path:
    """A virtualenv with TRL 1.12 and this interpreter's torch/transformers/peft; created once, then reused."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl.experimental.ppo, trl; assert trl.__version__.startswith('1.12')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    import peft
    import torch
    import transformers

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [
        f"torch=={torch.__version__.split('+')[0]}",
        "trl==1.12.*",
        f"transformers=={transformers.__version__}",
        f"peft=={peft.__version__}",
        "accelerate",
        "datasets",
    ]
    print(f"installing {' '.join(pins)} into {venv}", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    subprocess.run(probe, check=True)
    return python


def run_child(python: str, side: str, args, out: Path) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        CUDA_VISIBLE_DEVICES="",
    )
    cmd = [
        python,
        __file__,
        "--child",
        side,
        "--model",
        args.model,
        "--data",
        args.data,
        "--rollouts",
        str(args.rollouts),
        "--child-out",
        str(out),
        "--threads",
        str(args.threads),
    ]
    print(f"running {side} ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} failed with exit code {proc.returncode}")
    return json.loads(out.read_text())


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["tokens_per_s"])[(len(runs) - 1) // 2]


def report(ours: dict, theirs: dict, args) -> dict:
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    k = max(1, len(ours["scores"]) // 3)
    summary = {
        "settings": {
            **SETTINGS,
            "rollouts": args.rollouts,
            "threads": args.threads,
            "keyword": KEYWORD,
            "repeats": args.repeats,
        },
        "trl_ext": ours,
        "trl_112": theirs,
        "tokens_per_s_ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "peak_rss_ratio": ours["peak_rss_mib"] / theirs["peak_rss_mib"],
        "weights_ratio": ours["weights_mib"] / theirs["weights_mib"],
        "score_first_third": {"trl_ext": mean(ours["scores"][:k]), "trl_112": mean(theirs["scores"][:k])},
        "score_last_third": {"trl_ext": mean(ours["scores"][-k:]), "trl_112": mean(theirs["scores"][-k:])},
    }
    return summary


def write_markdown(summary: dict, path: Path) -> None:
    o, t = summary["trl_ext"], summary["trl_112"]
    lines = [
        "# PPO: trl-ext vs TRL 1.12 `trl.experimental.ppo.PPOTrainer`",
        "",
        'Same tiny model (`builtin:tiny-chat`), prompts, rule reward (mentions "river"), LoRA policy and PPO settings;',
        "CPU, one process per run, the two sides alternating on a shared machine; the run with the median tokens/s",
        "of each side is reported (all runs in the JSON). Timings are ratios measured in one session.",
        "trl-ext holds one base model (actor + critic adapters, value head, reference = adapters off); TRL 1.12 holds",
        "the policy (LoRA, reference = adapters off), a value model and a reward model.",
        "",
        "| | trl-ext | TRL 1.12 | ratio |",
        "|---|---|---|---|",
        f"| completion tokens/s | {o['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | "
        f"{summary['tokens_per_s_ratio']:.2f}x |",
        f"| peak RSS (MiB) | {o['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} | {summary['peak_rss_ratio']:.2f}x |",
        f"| model weights held (MiB) | {o['weights_mib']:.1f} | {t['weights_mib']:.1f} | "
        f"{summary['weights_ratio']:.2f}x |",
        f"| base models in memory | {o['base_models_held']} | {t['base_models_held']} | |",
        f"| train time (s) | {o['seconds']:.1f} | {t['seconds']:.1f} | |",
        f"| completion tokens | {o['completion_tokens']} | {t['completion_tokens']} | |",
        f"| mean score, first third of rollouts | {summary['score_first_third']['trl_ext']:.3f} | "
        f"{summary['score_first_third']['trl_112']:.3f} | |",
        f"| mean score, last third of rollouts | {summary['score_last_third']['trl_ext']:.3f} | "
        f"{summary['score_last_third']['trl_112']:.3f} | |",
        "",
        "Score per rollout (fraction of completions that mention the keyword):",
        "",
        "| rollout | trl-ext | TRL 1.12 |",
        "|---|---|---|",
    ]
    for i in range(max(len(o["scores"]), len(t["scores"]))):
        a = f"{o['scores'][i]:.3f}" if i < len(o["scores"]) else ""
        b = f"{t['scores'][i]:.3f}" if i < len(t["scores"]) else ""
        lines.append(f"| {i + 1} | {a} | {b} |")
    lines += [
        "",
        "All runs (seconds, tokens/s): "
        + "; ".join(
            f"{side}: " + ", ".join(f"{r['seconds']:.1f}s/{r['tokens_per_s']:.1f}" for r in rs)
            for side, rs in summary["runs"].items()
        ),
    ]
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in summary["settings"].items()), ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=24, help="PPO rollouts (each of SETTINGS['batch'] completions)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; the median is reported")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for each side (1 avoids OpenMP stalls on a shared machine)",
    )
    parser.add_argument("--venv", default="/tmp/trl-ext-bench-trl112", help="virtualenv for TRL 1.12 (created once)")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for ppo_vs_trl112.{json,md}")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["ours", "trl112"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        runner = run_ours if args.child == "ours" else run_trl112
        runner(args.model, args.data, args.rollouts, args.child_out)
        return 0

    from trl_ext.assets import resolve_builtin

    args.model = resolve_builtin("builtin:tiny-chat")
    args.data = str(Path(resolve_builtin("builtin:prompts")) / "train.jsonl")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(Path(args.venv))
    work = Path("/tmp/trl-ext-ppo-bench")
    work.mkdir(exist_ok=True)
    runs = {"ours": [], "trl112": []}
    for i in range(args.repeats):  # alternate the sides so that load changes on a shared machine hit both
        runs["ours"].append(run_child(sys.executable, "ours", args, work / f"ours-{i}.json"))
        runs["trl112"].append(run_child(str(python), "trl112", args, work / f"trl112-{i}.json"))
    summary = report(median_run(runs["ours"]), median_run(runs["trl112"]), args)
    summary["runs"] = {
        side: [{k: r[k] for k in ("seconds", "tokens_per_s", "peak_rss_mib")} for r in rs] for side, rs in runs.items()
    }
    (out / "ppo_vs_trl112.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "ppo_vs_trl112.md")
    print((out / "ppo_vs_trl112.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
