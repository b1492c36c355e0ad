"""PPO with a critic (RLHF PPO: KL-in-reward, GAE, clipped policy and value losses) on TRL's `GRPOTrainer`.

GRPO's machinery does generation (including vLLM), reward functions and reward models, the PEFT reference (adapters
off) and logging. PPO adds only the critic, the per-token KL-penalized reward, GAE and the value loss: the per-token
advantages, shape `(B, T)`, go through GRPO's PPO-clip loss unchanged. With LoRA, every role lives on one base:
actor = the `default` adapter, critic = a second adapter plus a scalar value head, reference = adapters disabled, or,
when the actor starts from `sft_adapter_path`, a frozen copy of that adapter named `ref` (the starting policy).
The critic (setup, values, save/load/resume) is `trl_ext.trainers.ppo_critic`; a reward model that is a LoRA adapter
on the same base (`reward_adapter_path`) is `trl_ext.trainers.ppo_reward`; the math is `trl_ext.trainers.ppo_math`.
"""

from __future__ import annotations

import copy

import torch
import trl
from trl.trainer.utils import disable_dropout_in_model, shuffle_sequence_dict, split_tensor_dict

from trl_ext.adapters import add_reference_adapter
from trl_ext.configs.ppo import PPOConfig
from trl_ext.ewc.trainer import EWCTrainerMixin
from trl_ext.trainers.base import SharedTrainerMixin
from trl_ext.trainers.ppo_critic import PPOCriticMixin
from trl_ext.trainers.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages_and_returns,
    kl_penalized_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
)
from trl_ext.trainers.ppo_reward import REWARD_ADAPTER, PPORewardAdapterMixin
from trl_ext.trainers.ppo_rollout import SampledLogps, sampled_logps_tensor
from trl_ext.trainers.reward_policy import RewardPolicyMixin

GRPO_ONLY_METRICS = ("frac_reward_zero_std",)  # constant 1 with one completion per prompt


def check_every_completion_scored(rewards_per_func: torch.Tensor, names: list[str]) -> None:
    """Refuse a rollout in which some completion got no reward at all.

    TRL turns a reward function's `None` into NaN; GRPO then leaves such a completion out (advantage 0). PPO would
    score it 0 through its KL-penalized reward and train on that, while TRL's logged `reward` leaves it out. A
    completion scored by at least one function is fine (TRL's convention for functions that apply to some
    samples only: the score sums the functions that scored it).

    Args:
        rewards_per_func (`torch.Tensor`):
            The rewards of every completion of the rollout, `(N, number of reward functions)`.
        names (`list[str]`):
            The reward functions' names, in column order.

    Raises:
        ValueError: Naming the reward functions that returned None or NaN and how often.
    """
    unscored = torch.isnan(rewards_per_func).all(dim=1)
    if not unscored.any():
        return
    counts = ", ".join(
        f"{name} ({int(torch.isnan(rewards_per_func[unscored, i]).sum())})" for i, name in enumerate(names)
    )
    raise ValueError(
        f"{int(unscored.sum())} of {len(unscored)} completions of this rollout have no reward: every reward function "
        f"returned None or NaN for them ({counts}). PPO cannot score such a completion (it is not a 0). Make the "
        "reward function return a float for every completion."
    )


def concat_mini_batches(batches: list[dict]) -> dict:
    """The rollout that `split_tensor_dict` split into `batches`: tensors and lists joined along the first
    dimension; scalars (0-dim tensors) and `None` kept as they are."""
    joined = {}
    for key, first in batches[0].items():
        if first is None or (isinstance(first, torch.Tensor) and first.ndim == 0):
            joined[key] = first
        elif isinstance(first, torch.Tensor):
            joined[key] = torch.cat([batch[key] for batch in batches])
        else:
            joined[key] = [item for batch in batches for item in batch[key]]
    return joined


class PPOTrainer(
    PPOCriticMixin, PPORewardAdapterMixin, EWCTrainerMixin, SharedTrainerMixin, RewardPolicyMixin, trl.GRPOTrainer
):
    """RLHF PPO with a critic on TRL's `trl.GRPOTrainer` (same constructor), with the EWC penalty on the actor's
    adapter (`ewc_lambda > 0`) and the forgetting monitor (`forgetting_anchor_dataset`).

    Logs TRL's classic PPO metrics: `objective/{kl,entropy,non_score_reward,rlhf_reward,scores}`,
    `policy/{approxkl,clipfrac}`, `loss/{policy,value}`, `val/{clipfrac,mean,var}`. The critic is saved to
    `<checkpoint>/critic/` (adapter or model, `value_head.safetensors`, `ppo_state.json`) and restored on resume.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            The actor, as `GRPOTrainer` takes it; with `peft_config` (or as a `PeftModel`) every role shares its base.
        reward_funcs (reward function or list of them, *optional*):
            As `GRPOTrainer`'s; the reward adapter of `args.reward_adapter_path`, if any, is appended to them.
        args (`PPOConfig`):
            The configuration; a plain `GRPOConfig` lacks the critic and GAE fields and is refused.
        peft_config (`peft.PeftConfig`, *optional*):
            LoRA of the actor; needed by `critic: adapter` and by `reward_adapter_path`.
        *posargs, **kwargs:
            The other arguments of `GRPOTrainer`, passed through.
    """

    _tag_names = ["trl", "trl-ext", "ppo"]

    def __init__(self, model, reward_funcs=None, args: PPOConfig | None = None, *posargs, peft_config=None, **kwargs):
        if args is None or not isinstance(args, PPOConfig):
            raise TypeError("PPOTrainer needs args=PPOConfig(...) (a GRPOConfig lacks the critic and GAE fields).")
        if args.critic == "adapter" and peft_config is None and not hasattr(model, "peft_config"):
            raise ValueError(
                "critic: adapter puts the critic in a second LoRA adapter, so the actor must use LoRA: pass a "
                "peft_config (recipe: use_peft: true), or set critic: shared or critic: model."
            )
        reward_funcs = self._reward_funcs_with_adapter(model, reward_funcs, args, peft_config)
        # PEFT rewrites `target_modules: all-linear` in place into the actor's module names, which a critic model
        # (`critic: model`, a bare decoder) does not have: the critic gets the config as it was given.
        critic_peft_config = copy.deepcopy(peft_config)
        super().__init__(model, reward_funcs, args, *posargs, peft_config=peft_config, **kwargs)
        if args.sft_adapter_path is not None:  # the reference is the starting policy: a frozen copy of its adapter
            add_reference_adapter(self.accelerator.unwrap_model(self.model))
        self._attach_critic(args, critic_peft_config)
        self._attach_reward_adapter()
        if args.critic_init_from_reward:
            self._init_critic_from_reward()
        if args.disable_dropout:  # GRPO disabled it in the actor; the critic's adapter or model came after
            disable_dropout_in_model(self.accelerator.unwrap_model(self.model))
        if args.adaptive_kl:
            self.kl_ctl = AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(args.kl_coef)
        self._last_logps = None
        self._rewards_per_func = None
        self._sampled_logps = None  # the rollout's old log-probabilities, read off generation
        self._generations = 0

    @torch.no_grad()
    def _init_critic_from_reward(self) -> None:
        """Start the critic as the reward model (OpenRLHF's critic initialisation): the critic adapter's LoRA weights
        become the reward adapter's, the value head's weight its `score` head's (bias zero when the head has none).

        Raises:
            ValueError: The reward adapter's LoRA shape (rank, alpha, modules) differs from the critic adapter's.
        """
        unwrapped = self.accelerator.unwrap_model(self.model)
        critic, reward = unwrapped.peft_config[self._critic_adapter], unwrapped.peft_config[REWARD_ADAPTER]
        params = dict(unwrapped.named_parameters())
        pairs = {n: n.replace(f".{self._critic_adapter}.", f".{REWARD_ADAPTER}.") for n in params}
        pairs = {n: r for n, r in pairs.items() if r != n}
        n_reward = sum(f".{REWARD_ADAPTER}." in n for n in params)
        fits = len(pairs) == n_reward and all(
            r in params and params[r].shape == params[n].shape for n, r in pairs.items()
        )
        if not fits or (critic.r, critic.lora_alpha) != (reward.r, reward.lora_alpha):
            raise ValueError(
                "critic_init_from_reward copies the reward adapter into the critic adapter, but their LoRA shapes "
                f"differ (critic r={critic.r}, lora_alpha={critic.lora_alpha}; reward r={reward.r}, "
                f"lora_alpha={reward.lora_alpha}; or other adapted modules). Train the reward model with the actor's "
                "lora_r, lora_alpha and lora_target_modules."
            )
        for name, reward_name in pairs.items():
            params[name].copy_(params[reward_name])
        head = unwrapped.ppo_value_head.summary
        head.weight.copy_(self._reward_head.weight.to(head.weight.dtype))
        head.bias.copy_(self._reward_head.bias if self._reward_head.bias is not None else torch.zeros_like(head.bias))
        self._restore_trainable()

    # --------------------------------------------------------------------------------------------- rollout scoring
    # GRPO's rollout has no public hook, so PPO extends three private methods of `GRPOTrainer`: the rollout itself
    # (adding GAE's advantages and returns), the per-function rewards (kept for the scores) and the policy
    # log-probabilities (kept from the loss's forward for the policy metrics).
    # `test_grpo_private_methods_ppo_extends_keep_their_parameters_and_callers` fails when TRL renames them, changes
    # their parameters or stops calling them where PPO relies on it.
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        try:
            check_every_completion_scored(self._rewards_per_func, self.reward_func_names)
        except ValueError as err:
            # The reward policy (`trl_ext.trainers.reward_policy`): PPO cannot leave a completion out of GAE, so an
            # unscored one stops the run, unless the recipe opted into dropping (advantage 0) with
            # `nonfinite_rewards: drop`.
            if self.args.nonfinite_rewards != "drop":
                self._stop_after_checkpoint(str(err))
        return self._rewards_per_func

    def _prepare_inputs(self, generation_batch):
        """GRPO's buffering of a rollout into mini-batches, with a fresh permutation of the rollout for every PPO epoch
        after the first (GRPO shuffles once per rollout and reuses the same mini-batches in the same order)."""
        steps = self.args.steps_per_generation
        epoch_start = self._step % steps == 0 and self._step % (steps * self.num_iterations) != 0
        if self.model.training and epoch_start and self._buffered_inputs is not None:
            rollout = shuffle_sequence_dict(concat_mini_batches(self._buffered_inputs))
            self._buffered_inputs = split_tensor_dict(rollout, steps)
        return super()._prepare_inputs(generation_batch)

    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        for name in GRPO_ONLY_METRICS:  # GRPO's group statistics; PPO's baseline is the critic, not a group
            self._metrics[mode].pop(name, None)
        super().log(logs, start_time)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        sampled = self._take_sampled_logps(model, input_ids, logits_to_keep, kwargs)
        if sampled is not None:  # the rollout's old log-probabilities: generation computed them already
            return sampled, None, None
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        self._last_logps = logps.detach()
        return logps, entropies, aux

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        """GRPO's generation, recording the sampled tokens' log-probabilities (transformers generation only)."""
        self._generations += 1
        recorder = None
        if not self.use_vllm:
            unwrapped = self.accelerator.unwrap_model(self.model)
            causal_lm = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
            recorder = SampledLogps(causal_lm, self.temperature)
        try:
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        finally:
            if recorder is not None:
                recorder.remove()
        one_turn = self._generations == 1  # tool turns call generation again: then the forward pass decides
        self._sampled_logps = recorder.completion_logps(completion_ids) if recorder is not None and one_turn else None
        return completion_ids, logprobs

    def _take_sampled_logps(self, model, input_ids, logits_to_keep, kwargs):
        """The recorded log-probabilities as the `(B, T)` tensor the first policy pass after generation (the old
        log-probabilities) would compute, or `None` when they do not fit that call exactly."""
        rows, self._sampled_logps = self._sampled_logps, None
        if rows is None or model is not self.model or kwargs.get("compute_entropy") or len(rows) != len(input_ids):
            return None
        if max(len(row) for row in rows) > logits_to_keep:
            return None
        return sampled_logps_tensor(rows, logits_to_keep, input_ids.device)

    @torch.no_grad()
    def _generate_and_score_completions(self, inputs):
        """GRPO's rollout, then PPO's: reference log-probabilities, values, KL-penalized per-token rewards, GAE
        advantages `(B, T)` and returns, and TRL's classic `objective/*` metrics; the KL controller is updated."""
        self._sampled_logps, self._generations = None, 0
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        n_tokens = completion_ids.size(1)
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        logps = output.get("old_per_token_logps")
        if logps is None:
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, n_tokens, batch_size=batch_size
            )
        self._sampled_logps = None
        ref_logps = self._reference_logps(input_ids, attention_mask, n_tokens, batch_size)
        values = torch.cat(
            [
                self._critic_values(input_ids[i : i + batch_size], attention_mask[i : i + batch_size], n_tokens)
                for i in range(0, input_ids.size(0), batch_size)
            ]
        )
        scores = self._local_scores(completion_ids, output["completion_mask"])
        rewards, non_score, kl = kl_penalized_rewards(logps.float(), ref_logps.float(), scores, mask, self.kl_ctl.value)
        if self.args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae_advantages_and_returns(rewards, values, mask, self.args.gamma, self.args.lam)
        if self.args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        advantages = self._drop_unscored(advantages)  # completions no reward function scored train nothing
        output.update(advantages=advantages, returns=returns, old_values=values * mask, old_per_token_logps=logps)

        # TRL's classic PPO metrics, averaged over every process's rollout
        seq_kl = kl.sum(1)
        stats = torch.stack(
            [seq_kl.mean(), (-logps.float() * mask).sum(1).mean(), non_score.sum(1).mean(), scores.mean()]
        )
        kl_mean, entropy, non_score_reward, score = self.accelerator.gather(stats[None]).mean(0).tolist()
        metrics = self._metrics[mode]
        metrics["objective/kl"].append(kl_mean)
        metrics["objective/entropy"].append(entropy)
        metrics["objective/non_score_reward"].append(non_score_reward)
        metrics["objective/rlhf_reward"].append(score + non_score_reward)
        metrics["objective/scores"].append(score)
        metrics["objective/kl_coef"].append(self.kl_ctl.value)
        if mode == "train":
            self.kl_ctl.update(kl_mean, input_ids.size(0) * self.accelerator.num_processes)
        return output

    def _reference_logps(self, input_ids, attention_mask, n_tokens, batch_size):
        """Per-token log-probabilities of the reference: `ref_model`, else the `ref` adapter, else adapters off."""
        self._sampled_logps = None  # the policy's, never the reference's
        if self.ref_model is not None:
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.ref_model, input_ids, attention_mask, n_tokens, batch_size=batch_size
            )
            return logps
        from trl.trainer.utils import use_adapter

        unwrapped = self.accelerator.unwrap_model(self.model)
        try:
            with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, n_tokens, batch_size=batch_size
                )
        finally:
            self._restore_trainable()
        return logps

    def _local_scores(self, completion_ids, completion_mask):
        """This process's sequence scores (weighted reward sum), with the missing-EOS penalty applied.

        Args:
            completion_ids (`torch.Tensor`):
                This process's completions, `(B, T)`.
            completion_mask (`torch.Tensor`):
                Their mask, `(B, T)`.

        Returns:
            `torch.Tensor`: The scores, `(B,)` in fp32.
        """
        rewards_per_func = self._rewards_per_func
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        scores = (rewards_per_func * weights).nansum(dim=1)
        scores = torch.where(torch.isnan(rewards_per_func).all(dim=1), torch.zeros_like(scores), scores)
        n = completion_ids.size(0)
        start = self.accelerator.process_index * n
        scores = scores[start : start + n].to(completion_ids.device).float()
        if self.args.missing_eos_penalty is not None:
            lengths = completion_mask.sum(1).clamp(min=1)
            last = completion_ids.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
            eos = torch.tensor(self.eos_token_ids, device=last.device)
            has_eos = torch.isin(last, eos) & (completion_mask.sum(1) > 0)
            scores = scores - self.args.missing_eos_penalty * (~has_eos).float()
        return scores

    # ------------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """GRPO's PPO-clip loss over the `(B, T)` advantages (GRPO's aggregation) plus `vf_coef` times the clipped
        value loss of the critic; logs TRL's classic PPO policy and value metrics."""
        self._restore_trainable()
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        values = self._critic_values(input_ids, attention_mask, inputs["completion_ids"].size(1))
        vf_loss, vf_clipfrac = clipped_value_loss(
            values, inputs["old_values"], inputs["returns"], mask, self.args.cliprange_value
        )
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss + self.args.vf_coef * vf_loss / normalizer

        with torch.no_grad():
            logps = self._last_logps.float()
            old = inputs.get("old_per_token_logps", logps).float()
            pg_loss, pg_clipfrac, approxkl = clipped_policy_loss(
                logps, old, inputs["advantages"], mask, self.args.epsilon
            )
            stats = torch.stack(
                [
                    approxkl,
                    pg_clipfrac,
                    pg_loss,
                    vf_loss.detach(),
                    vf_clipfrac,
                    masked_mean(values, mask),
                    masked_var(values, mask),
                ]
            )
            stats = self.accelerator.gather(stats[None]).mean(0).tolist()
        for name, value in zip(
            ["policy/approxkl", "policy/clipfrac", "loss/policy", "loss/value", "val/clipfrac", "val/mean", "val/var"],
            stats,
        ):
            self._metrics[mode][name].append(value)
        return loss

    def create_optimizer(self, *args, **kwargs):
        self._restore_trainable()
        return super().create_optimizer(*args, **kwargs)
