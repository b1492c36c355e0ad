"""The two sides of `benchmarks/ppo_vs_trl112.py`, each run in its own process: trl-ext's PPOTrainer and TRL 1.12's
`trl.experimental.ppo.PPOTrainer` on the same settings, with the phase timers, the rule reward and the `gc.collect`
neutralisation both share.
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

KEYWORD = "river"
SETTINGS = dict(
    batch=16,  # completions per rollout (one per prompt)
    ppo_epochs=4,
    mini_batches=2,  # optimizer steps per PPO epoch
    new_tokens=24,  # every completion is exactly this long on both sides
    temperature=1.0,
    learning_rate=1e-3,
    kl_coef=0.05,
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    gamma=1.0,
    lam=0.95,
    lora_r=16,
    lora_alpha=32,
)


# ----------------------------------------------------------------------------------------------------------- shared
class PhaseTimer:
    """Exclusive CPU time of the main thread per phase (torch runs on it alone with one thread, and CPU time is what
    other processes on a shared machine do not inflate); a phase nested in another is subtracted from the outer one."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.stack: list[list] = []

    @contextmanager
    def phase(self, name: str):
        start = time.thread_time()
        self.stack.append([name, 0.0])
        try:
            yield
        finally:
            _, nested = self.stack.pop()
            spent = time.thread_time() - start
            self.seconds[name] += spent - nested
            if self.stack:
                self.stack[-1][1] += spent

    def wrap(self, owner, attribute: str, name):
        """Time every call of `owner.attribute`; `name` is a phase name or a function of the call's arguments."""
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


class Recorder:
    """Scores each completion by the rule and keeps the score and the time of every rollout."""

    def __init__(self):
        self.tokens = 0
        self.scores: list[float] = []
        self.times: list[float] = []

    def record(self, completion_token_ids, texts: list[str]) -> list[float]:
        self.tokens += sum(len(ids) for ids in completion_token_ids)
        rewards = [1.0 if KEYWORD in t.lower() else 0.0 for t in texts]
        self.scores.append(sum(rewards) / len(rewards))
        self.times.append(time.perf_counter())
        return rewards


def neutralise_gc(timer: PhaseTimer) -> dict:
    """Make `gc.collect` a no-op that counts its calls (both sides)."""
    calls = {"n": 0}
    gc.real_collect = gc.collect

    def collect(*args, **kwargs):
        calls["n"] += 1
        return 0

    gc.collect = collect
    return calls


def gc_cost(calls: int) -> float:
    """Seconds that `calls` real `gc.collect()` take on the heap as it is now."""
    start = time.perf_counter()
    for _ in range(calls):
        gc.real_collect()
    return time.perf_counter() - start


def lora_config(task_type):
    from peft import LoraConfig

    return LoraConfig(
        r=SETTINGS["lora_r"],
        lora_alpha=SETTINGS["lora_alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type=task_type,
    )


def quantization(precision: str):
    import torch
    from transformers import BitsAndBytesConfig

    if precision != "4bit":
        return {}
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    }


def load_prompts(data_path: str, n: int) -> list[list[dict]]:
    with open(data_path, encoding="utf-8") as fh:
        return [json.loads(line)["prompt"] for line in fh if line.strip()][:n]


def weights_mib(*modules) -> float:
    """Bytes of the distinct parameter tensors held by `modules` (shared tensors counted once), in MiB."""
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total / 2**20


@contextmanager
def clocks():
    """Wall and main-thread CPU seconds of the block, in the dict it yields."""
    spent = {}
    wall, cpu = time.perf_counter(), time.thread_time()
    yield spent
    spent.update(wall=time.perf_counter() - wall, cpu=time.thread_time() - cpu)


def finish(side, rec, spent, timer, gc_calls, out, weights, n_models, extra=None) -> None:
    per_rollout = [b - a for a, b in zip(rec.times, rec.times[1:])]
    seconds = spent["wall"]
    result = dict(
        side=side,
        seconds=seconds,
        cpu_seconds=spent["cpu"],
        rollouts=len(rec.scores),
        seconds_per_rollout=seconds / len(rec.scores),
        cpu_seconds_per_rollout=spent["cpu"] / len(rec.scores),
        median_rollout_interval=statistics.median(per_rollout) if per_rollout else None,
        completion_tokens=rec.tokens,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        weights_mib=weights,
        base_models_held=n_models,
        phases={k: v / len(rec.scores) for k, v in timer.seconds.items()},
        gc_collect_calls=gc_calls["n"],
        gc_collect_seconds=gc_cost(gc_calls["n"]),
        scores=rec.scores,
        **(extra or {}),
    )
    result["phases"]["other"] = result["cpu_seconds_per_rollout"] - sum(result["phases"].values())
    Path(out).write_text(json.dumps(result))


def common_timers(timer: PhaseTimer, accelerator) -> None:
    from accelerate.optimizer import AcceleratedOptimizer

    timer.wrap(accelerator, "backward", "backward")
    timer.wrap(AcceleratedOptimizer, "step", "optimizer step")  # both sides step through accelerate's wrapper


# --------------------------------------------------------------------------------------------------------- trl-ext
def run_ours(model_path, precision, data_path, rollouts, seed, epochs, out, recompute=False) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.trainers.ppo import PPOConfig, PPOTrainer

    s = SETTINGS
    tok = AutoTokenizer.from_pretrained(model_path)
    rec, timer = Recorder(), PhaseTimer()

    def keyword_reward(prompts, completions, completion_ids, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return rec.record(completion_ids, texts)

    args = PPOConfig(
        output_dir=str(Path(out).parent / "ours-run"),
        per_device_train_batch_size=s["batch"] // s["mini_batches"],
        num_mini_batches=s["mini_batches"],
        num_ppo_epochs=epochs,
        max_steps=rollouts * epochs * s["mini_batches"],
        max_completion_length=s["new_tokens"],
        generation_kwargs={"min_new_tokens": s["new_tokens"]},
        temperature=s["temperature"],
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        kl_coef=s["kl_coef"],
        epsilon=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,  # TRL 1.12's default; GRPOConfig's is True
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **quantization(precision))
    trainer = PPOTrainer(
        model=model,
        reward_funcs=[keyword_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": load_prompts(data_path, 256)}),
        processing_class=tok,
        peft_config=lora_config("CAUSAL_LM"),
    )
    in_loss = {"on": False}

    def logps_phase(trainer_, model_, *a, **k):
        if in_loss["on"]:
            return "train forward: policy"
        return "reference" if timer.stack and timer.stack[-1][0] == "reference" else "old log-probs"

    if recompute:
        trainer._take_sampled_logps = lambda *a, **k: None
    timer.wrap(trainer, "_generate", "generation")
    timer.wrap(trainer, "_calculate_rewards", "reward")
    timer.wrap(trainer, "_reference_logps", "reference")
    timer.wrap(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: logps_phase(trainer, *a, **k))
    timer.wrap(
        trainer,
        "_critic_values",
        lambda *a, **k: "train forward: critic" if in_loss["on"] else "values (rollout)",
    )
    original_loss = trainer.compute_loss

    def compute_loss(*a, **k):
        in_loss["on"] = True
        try:
            return original_loss(*a, **k)
        finally:
            in_loss["on"] = False

    trainer.compute_loss = compute_loss
    common_timers(timer, trainer.accelerator)
    gc_calls = neutralise_gc(timer)
    with clocks() as spent:
        trainer.train()
    finish("trl-ext", rec, spent, timer, gc_calls, out, weights_mib(trainer.model, trainer.ref_model), 1)


# -------------------------------------------------------------------------------------------------------- TRL 1.12
def run_trl112(model_path, precision, data_path, rollouts, seed, epochs, out) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    s = SETTINGS
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    rec, timer = Recorder(), PhaseTimer()
    prompts = load_prompts(data_path, 256)
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
    ids = [x["input_ids"] if isinstance(x, dict) else list(x) for x in ids]
    dataset = Dataset.from_dict({"input_ids": ids})

    quant = quantization(precision)
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **quant)
    if quant:
        from peft import prepare_model_for_kbit_training

        policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=False)
    # the value model trains all its weights (TRL 1.12 applies LoRA to the policy only), so it stays unquantized
    value_model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, dtype=torch.float32, **quant
    )
    for m in (policy, value_model, reward_model):
        m.config.pad_token_id = tok.pad_token_id

    original_get_reward = ppo_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is not reward_model:  # the value model: TRL's own code path
            with timer.phase("values (rollout)"):
                return original_get_reward(model, query_responses, pad_token_id, context_length)
        with timer.phase("reward"):
            responses = query_responses[:, context_length:].tolist()
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            scores = torch.tensor(rec.record(responses, texts), device=query_responses.device)
            return None, scores, None

    ppo_module.get_reward = get_reward
    ppo_module.GenerationConfig = lambda **kw: GenerationConfig(**kw, min_new_tokens=s["new_tokens"])
    timer.wrap(ppo_module, "batch_generation", "generation")
    timer.wrap(
        ppo_module,
        "forward",
        lambda *a, **k: "train forward: policy + critic" if torch.is_grad_enabled() else "reference",
    )
    args = PPOConfig(
        output_dir=str(Path(out).parent / "trl112-run"),
        per_device_train_batch_size=s["batch"],  # TRL 1.12: the rollout; num_mini_batches splits it
        gradient_accumulation_steps=1,
        num_mini_batches=s["mini_batches"],
        num_ppo_epochs=epochs,
        total_episodes=rollouts * s["batch"],
        local_rollout_forward_batch_size=s["batch"],
        response_length=s["new_tokens"],
        temperature=s["temperature"],
        learning_rate=s["learning_rate"],
        lr_scheduler_type="constant",
        kl_coef=s["kl_coef"],
        missing_eos_penalty=None,
        stop_token=None,
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
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
    assert args.local_batch_size == s["batch"] and args.local_mini_batch_size == s["batch"] // s["mini_batches"]
    common_timers(timer, trainer.accelerator)
    gc_calls = neutralise_gc(timer)
    with clocks() as spent:
        trainer.train()
    held = [trainer.model, trainer.ref_model, reward_model]
    finish("trl-1.12", rec, spent, timer, gc_calls, out, weights_mib(*held), 3 + (trainer.ref_model is not None))
