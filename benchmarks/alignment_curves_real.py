"""Alignment learning curves on a real model: DPO, GRPO and PPO on SmolLM2-135M-Instruct, judged by one reward model.

1. Reward model: the pipeline's reward stage (``recipes/quickstart/reward.yaml``: TRL's RewardTrainer, LoRA r=16
   all-linear + score head, on the unquantized base) on the 120 train pairs of ``builtin:preferences``; its held-out
   pairwise accuracy on the 30 test pairs is recorded (TRL's ``eval_accuracy`` and this script's own scorer). For
   GRPO it is merged into a plain sequence classifier in ``--work`` and given as ``reward_model_name_or_path`` (TRL's
   GRPO loads a model-id string as a reward model); PPO uses the adapter itself (``reward_adapter_path``,
   ``critic: adapter``).
2. Policies, each from the base with a fresh LoRA (r=16 all-linear), seed 42, the same number of optimizer steps of
   4 sequences each, on the same 120 training prompts: DPO on those prompts' preference pairs (4 pairs a step),
   GRPO on the prompts alone (1 prompt x 4 generations a step), PPO on the prompts alone (4 prompts x 1 rollout a
   step, 1 PPO epoch, 1 mini-batch). Learning rate and KL strength as the quickstart recipes ship them.
3. The same held-out evaluation for all three, before training, every ``--eval-every`` steps and at the end: for 16 of
   the 30 test prompts (never trained on), 2 sampled completions each (temperature 1, ``--max-new-tokens``, fixed
   seed), scored by the reward model (its raw score), and the KL of those samples to the reference (the base, LoRA
   disabled): the sum over the completion's tokens of log pi(y_t) - log pi_ref(y_t), averaged over the 32 samples
   (a Monte-Carlo estimate of the sequence KL, in nats). The training-time axis excludes the evaluations. GRPO's
   and PPO's own training logs (TRL's ``reward``/``kl``, PPO's ``objective/kl``) are kept next to it.

    python benchmarks/alignment_curves_real.py              # ~16 min on the shared 2-core CPU, one torch thread
    python benchmarks/alignment_curves_real.py --table-only

Results: ``benchmarks/results/real_model_alignment.{json,md}`` (curves) and the summary under ``alignment`` in
``benchmarks/results/real_model.json``, each written as a method finishes; a rerun reuses the reward adapter in
``--work``. One seed, one run: timings are ratios from one shared machine, not absolute speeds.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "quickstart"
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "builtin:smollm2-135m-instruct"
COMMON = {
    "model_name_or_path": MODEL,
    "load_in_4bit": False,
    "use_bnb_nested_quant": False,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "lora_target_modules": ["all-linear"],
    "seed": 42,
    "save_strategy": "no",
    "report_to": "none",
    "gradient_checkpointing": False,
}


def recipe_for(name: str, **changes):
    """A quickstart recipe with the real model, an unquantized base and `changes` on top."""
    from trl_ext.recipe import build_recipe, read_recipe_mapping

    raw = read_recipe_mapping(QUICKSTART / name)
    raw.update(COMMON)
    raw.update(changes)
    return build_recipe(raw, [], path=str(QUICKSTART / name))


class Judge:
    """The reward model as a plain sequence classifier, and the held-out evaluation every method gets."""

    def __init__(self, merged: str, prompts: list, samples: int, max_new_tokens: int):
        from transformers import AutoModelForSequenceClassification

        from trl_ext.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(merged)
        self.rm = AutoModelForSequenceClassification.from_pretrained(merged, num_labels=1).eval()
        self.prompts, self.samples, self.max_new_tokens = prompts, samples, max_new_tokens

    def score(self, prompts: list, completions: list[str]) -> list[float]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(p + [{"role": "assistant", "content": c}], tokenize=False)
            for p, c in zip(prompts, completions)
        ]
        self.tokenizer.padding_side = "right"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            return self.rm(**batch).logits[:, 0].tolist()

    def evaluate(self, model) -> dict:
        """Sample completions for the held-out prompts, score them and measure their KL to the reference."""
        import torch

        tok = self.tokenizer
        prompts = [p for p in self.prompts for _ in range(self.samples)]
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        tok.padding_side = "left"
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(), torch.no_grad():  # the training's random stream is left as it was
            torch.manual_seed(1234)
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
            )
            width = batch["input_ids"].shape[1]
            completion = out[:, width:]
            # completion tokens up to and including the first EOS
            is_eos = completion == tok.eos_token_id
            first = torch.where(
                is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], 10**6, dtype=torch.long)
            )
            mask = (torch.arange(completion.shape[1])[None, :] <= first[:, None]).float()
            attention = torch.cat([batch["attention_mask"], mask.long()], dim=1)

            def logprobs():
                positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding, as generate placed them
                logits = model(input_ids=out, attention_mask=attention, position_ids=positions).logits
                logits = logits[:, width - 1 : -1].float()
                return torch.log_softmax(logits, -1).gather(-1, completion[..., None])[..., 0]

            policy = logprobs()
            with model.disable_adapter():
                reference = logprobs()
        if was_training:
            model.train()
        kl = ((policy - reference) * mask).sum(1)
        decoded = tok.batch_decode(
            completion * mask.long() + tok.pad_token_id * (1 - mask.long()), skip_special_tokens=True
        )
        rewards = self.score(prompts, decoded)
        return {
            "reward": sum(rewards) / len(rewards),
            "reward_se": statistics.stdev(rewards) / len(rewards) ** 0.5,
            "kl": kl.mean().item(),
            "kl_per_token": (kl.sum() / mask.sum()).item(),
            "tokens": int(mask.sum().item()),
            "example": decoded[0],
        }


def curve_callback(judge: Judge, every: int, curve: list, logs: list):
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        """Held-out evaluation at step 0, every `every` steps and at the end; the trainer's logs with their time."""

        def __init__(self):
            self.start, self.eval_seconds = None, 0.0

        def train_seconds(self) -> float:
            return time.perf_counter() - self.start - self.eval_seconds

        def point(self, step: int, model) -> None:
            t0 = time.perf_counter()
            result = judge.evaluate(model)
            self.eval_seconds += time.perf_counter() - t0
            curve.append({"step": step, "train_seconds": round(self.train_seconds(), 1), **result})
            print(json.dumps(curve[-1]), flush=True)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.start = time.perf_counter()
            self.point(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self.point(state.global_step, model)

        def on_log(self, args, state, control, logs=None, **kwargs):
            entry = {"step": state.global_step, "train_seconds": round(self.train_seconds(), 1)}
            logs_list.append({**entry, **{k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}})

    logs_list = logs
    return Curve()


def write(key: str, value, args) -> None:
    """Store `alignment.<key>` in both results files now (locked: other benchmarks write real_model.json too)."""
    with open(Path(tempfile.gettempdir()) / "real_model.json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        full = json.loads(args.curves.read_text()) if args.curves.is_file() else {}
        full[key] = value
        args.curves.write_text(json.dumps(full, indent=2) + "\n")
        summary = json.loads(args.out.read_text()) if args.out.is_file() else {}
        section = summary.setdefault("alignment", {})
        section[key] = (
            {k: v for k, v in value.items() if k not in ("curve", "logs")} if isinstance(value, dict) else value
        )
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    write_table(full, RESULTS / "real_model_alignment.md")


def train_reward(work: Path, steps: int) -> dict:
    from trl_ext.train import run

    recipe = recipe_for(
        "reward.yaml",
        output_dir=str(work / "reward"),
        max_steps=steps,
        per_device_train_batch_size=4,
        eval_strategy="no",
        logging_steps=5,
    )
    t0 = time.perf_counter()
    trainer = run(recipe)
    seconds = time.perf_counter() - t0
    del trainer
    gc.collect()
    return {
        "steps": steps,
        "batch": 4,
        "train_seconds": round(seconds, 1),
    }


def merge_reward(adapter: Path, out: Path) -> None:
    """The reward adapter folded into a plain sequence classifier (base + LoRA + score head)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from trl_ext.assets import resolve_builtin
    from trl_ext.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(adapter))
    base = AutoModelForSequenceClassification.from_pretrained(resolve_builtin(MODEL), num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def policy_recipe(method: str, work: Path, steps: int, prompts_dir: Path, max_new_tokens: int):
    if method == "dpo":
        return recipe_for("dpo.yaml", output_dir=str(work / "dpo"), max_steps=steps, per_device_train_batch_size=4,
                          logging_steps=1)  # fmt: skip
    shared = {"dataset_name": str(prompts_dir), "reward_funcs": [], "reward_kwargs": {}, "max_steps": steps,
              "per_device_train_batch_size": 4, "max_completion_length": max_new_tokens, "logging_steps": 1,
              "output_dir": str(work / method)}  # fmt: skip
    if method == "grpo":
        return recipe_for(
            "grpo.yaml", num_generations=4, reward_model_name_or_path=str(work / "reward-merged"), **shared
        )
    return recipe_for("ppo.yaml", reward_adapter_path=str(work / "reward"), critic="adapter", num_ppo_epochs=1,
                      num_mini_batches=1, **shared)  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/alignment_real"))
    parser.add_argument("--methods", nargs="+", default=["dpo", "grpo", "ppo"])
    parser.add_argument("--rm-steps", type=int, default=24)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "real_model.json")
    parser.add_argument("--curves", type=Path, default=RESULTS / "real_model_alignment.json")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if args.table_only:
        write_table(json.loads(args.curves.read_text()), RESULTS / "real_model_alignment.md")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    data = ROOT / "trl_ext" / "data" / "preferences"
    train_rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
    test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines() if line.strip()]
    prompts_dir = args.work / "prompts"
    prompts_dir.mkdir(parents=True, exist_ok=True)
    (prompts_dir / "train.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in train_rows))

    setup = {
        "model": MODEL,
        "command": "python benchmarks/alignment_curves_real.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": "2 CPU cores shared with other engineers' jobs; 1 torch thread",
        "steps": args.steps,
        "sequences_per_step": 4,
        "eval_every": args.eval_every,
        "eval_prompts": args.eval_prompts,
        "eval_samples_per_prompt": 2,
        "max_new_tokens": args.max_new_tokens,
        "train_prompts": "the 120 prompts of builtin:preferences train (DPO: their pairs)",
        "eval_prompts_source": "the first prompts of builtin:preferences test (held out)",
        "seed": 42,
    }
    write("setup", setup, args)
    if not (args.work / "reward" / "adapter_config.json").is_file():
        write("reward_model", train_reward(args.work, args.rm_steps), args)
    merged = args.work / "reward-merged"
    if not (merged / "config.json").is_file():
        merge_reward(args.work / "reward", merged)
    judge = Judge(str(merged), [r["prompt"] for r in test_rows[: args.eval_prompts]], 2, args.max_new_tokens)
    chosen = judge.score([r["prompt"] for r in test_rows], [r["chosen"][0]["content"] for r in test_rows])
    rejected = judge.score([r["prompt"] for r in test_rows], [r["rejected"][0]["content"] for r in test_rows])
    full = json.loads(args.curves.read_text())
    rm = {**full.get("reward_model", {}), "held_out_pairs": len(test_rows)}
    rm["held_out_accuracy"] = sum(c > r for c, r in zip(chosen, rejected)) / len(test_rows)
    rm["mean_chosen_score"] = sum(chosen) / len(chosen)
    rm["mean_rejected_score"] = sum(rejected) / len(rejected)
    write("reward_model", rm, args)
    print("reward model", json.dumps(rm), flush=True)

    from trl_ext.train import build_trainer

    for method in args.methods:
        curve, logs = [], []
        trainer = build_trainer(policy_recipe(method, args.work, args.steps, prompts_dir, args.max_new_tokens),
                                callbacks=[cb := curve_callback(judge, args.eval_every, curve, logs)])  # fmt: skip
        trainer.train()
        seconds = cb.train_seconds()
        start, end = curve[0], curve[-1]
        write(
            method,
            {
                "steps": end["step"],
                "train_seconds": round(seconds, 1),
                "reward_start": start["reward"],
                "reward_end": end["reward"],
                "reward_se_start": start["reward_se"],
                "reward_se_end": end["reward_se"],
                "reward_gain_per_train_second": (end["reward"] - start["reward"]) / seconds,
                "kl_end": end["kl"],
                "kl_per_token_end": end["kl_per_token"],
                "eval_tokens_end": end["tokens"],
                "learning_rate": trainer.args.learning_rate,
                "kl_strength": {"dpo": "beta", "grpo": "beta", "ppo": "kl_coef"}[method],
                "kl_strength_value": getattr(trainer.args, "kl_coef" if method == "ppo" else "beta"),
                "curve": curve,
                "logs": logs,
            },
            args,
        )
        del trainer
        gc.collect()
    return 0


def se(result: dict, at: str) -> str:
    value = result.get(f"reward_se_{at}")
    return "" if value is None else f" ± {value:.2f}"


def write_table(full: dict, path: Path) -> None:
    setup, rm = full.get("setup", {}), full.get("reward_model", {})
    lines = [
        f"# Alignment learning curves on {setup.get('model')}: DPO, GRPO and PPO judged by one reward model",
        "",
        f"Command: `{setup.get('command', '').strip()}`; {setup.get('date')}; {setup.get('machine')}. Each method: "
        f"{setup.get('steps')} optimizer steps of {setup.get('sequences_per_step')} sequences from a fresh LoRA on "
        f"the base, seed {setup.get('seed')}, one run. Training prompts: {setup.get('train_prompts')}. Evaluation: "
        f"{setup.get('eval_prompts')} held-out prompts x {setup.get('eval_samples_per_prompt')} samples of up to "
        f"{setup.get('max_new_tokens')} tokens, scored by the reward model; KL = sum over the sampled tokens of "
        "log pi - log pi_ref (base, LoRA off), in nats per completion. Seconds are training seconds without the "
        "evaluations, from one shared machine: compare them as ratios only. Rewards are means ± their standard "
        "error over the evaluation's samples; the KL estimate is noisy too and can dip below 0 when the policy is "
        "still close to the reference.",
        "",
        f"Reward model: the pipeline's reward stage, {rm.get('steps')} steps x {rm.get('batch')} pairs, "
        f"{rm.get('train_seconds')} s; held-out pairwise accuracy {rm.get('held_out_accuracy', float('nan')):.2f} "
        f"on {rm.get('held_out_pairs')} test pairs "
        f"(mean score of the chosen answers {rm.get('mean_chosen_score', 0):.2f}, "
        f"of the rejected {rm.get('mean_rejected_score', 0):.2f}).",
        "",
        "| method | steps | train s | reward start | reward end | gain / train s | KL end (nats/completion) | "
        "KL / token | tokens sampled (eval) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in ("dpo", "grpo", "ppo"):
        if method in full:
            r = full[method]
            lines.append(
                f"| {method.upper()} | {r['steps']} | {r['train_seconds']:.0f} | "
                f"{r['reward_start']:.3f}{se(r, 'start')} | "
                f"{r['reward_end']:.3f}{se(r, 'end')} | {r['reward_gain_per_train_second']:.4f} | {r['kl_end']:.3f} | "
                f"{r['kl_per_token_end']:.4f} | {r['eval_tokens_end']} |"
            )
    settings = [
        f"{m.upper()} lr {full[m]['learning_rate']:g}, {full[m]['kl_strength']} {full[m]['kl_strength_value']:g}"
        for m in ("dpo", "grpo", "ppo")
        if m in full
    ]
    lines += ["", "Learning rate and KL strength as the quickstart recipes ship them: " + "; ".join(settings) + "."]
    lines += ["", "Curves (held-out reward / KL at each evaluation, training seconds):", ""]
    for method in ("dpo", "grpo", "ppo"):
        if method in full:
            points = ", ".join(
                f"step {p['step']} ({p['train_seconds']:.0f} s): {p['reward']:.3f} / {p['kl']:.2f}"
                for p in full[method]["curve"]
            )
            lines.append(f"- {method.upper()}: {points}")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
