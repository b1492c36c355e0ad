"""PPO math as pure tensor functions: KL-in-reward, GAE, whitening, the clipped losses, KL controllers.

Every function works on right-padded completion tensors of shape `(B, T)` with a `mask` of the same shape that is 1 on
the tokens the policy generated and 0 elsewhere: padding, and in tool or environment rollouts the tool results inside
a completion (holes in the mask). The score sits on each row's last unmasked token, and GAE runs over the unmasked
tokens alone: values and the running advantage are carried across a hole, never cut by it.
"""

from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1.

    Args:
        values (`torch.Tensor`):
            Values to average.
        mask (`torch.Tensor`):
            1 where a value counts, 0 elsewhere; same shape as `values`.
        dim (`int`, *optional*):
            Dimension to average along; the mean over every masked position when `None`.

    Returns:
        `torch.Tensor`: The masked mean (a scalar, or `values` reduced along `dim`).
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over the positions where `mask` is 1.

    Args:
        values (`torch.Tensor`):
            Values whose variance is taken.
        mask (`torch.Tensor`):
            1 where a value counts, 0 elsewhere; same shape as `values`.
        unbiased (`bool`, *optional*, defaults to `True`):
            Apply Bessel's correction (when more than one position counts).

    Returns:
        `torch.Tensor`: The masked variance, a scalar.
    """
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalize `values` to unit variance over the positions where `mask` is 1.

    Args:
        values (`torch.Tensor`):
            Values to whiten.
        mask (`torch.Tensor`):
            1 where a value counts, 0 elsewhere; same shape as `values`.
        shift_mean (`bool`, *optional*, defaults to `True`):
            Also shift to zero mean; when `False` the mean is kept.

    Returns:
        `torch.Tensor`: The whitened values, 0 on padding.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def kl_penalized_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards of RLHF PPO: `-kl_coef * (log π - log π_ref)` at every completion token, plus the sequence
    score at the last completion token.

    Args:
        logprobs (`torch.Tensor`):
            Per-token log-probabilities of the policy, `(B, T)`.
        ref_logprobs (`torch.Tensor`):
            Per-token log-probabilities of the reference, `(B, T)`.
        scores (`torch.Tensor`):
            Sequence scores, `(B,)`.
        mask (`torch.Tensor`):
            Completion mask, `(B, T)`.
        kl_coef (`float`):
            Coefficient of the KL penalty.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: `(rewards, non_score_rewards, kl)`, each `(B, T)` and 0 on
        padding.
    """
    mask_f = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask_f
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    last = last_unmasked_index(mask)
    rows = torch.nonzero(last >= 0, as_tuple=True)[0]
    rewards[rows, last[rows]] += scores[rows].to(rewards.dtype)
    return rewards, non_score, kl


def last_unmasked_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last position where `mask` is 1 (-1 for a row without one); holes allowed.

    Args:
        mask (`torch.Tensor`):
            Completion mask, `(B, T)`.

    Returns:
        `torch.Tensor`: The indices, `(B,)` long.
    """
    positions = torch.arange(1, mask.size(1) + 1, device=mask.device)
    return (positions * (mask != 0)).max(dim=1).values - 1


def gae_advantages_and_returns(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the completion tokens.

    `delta_t = r_t + gamma * V_{t+1} - V_t` with `V` past the last token taken as 0, and
    `A_t = delta_t + gamma * lam * A_{t+1}`; returns are `A_t + V_t` (the value-loss target). `t + 1` is the next
    unmasked token: across a hole (a tool result) the next value and the running advantage pass through unchanged,
    as if the masked tokens were not there.

    Args:
        rewards (`torch.Tensor`):
            Per-token rewards, `(B, T)`.
        values (`torch.Tensor`):
            Per-token values of the critic, `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask, `(B, T)`.
        gamma (`float`):
            Discount factor.
        lam (`float`):
            λ of GAE.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(advantages, returns)`, each `(B, T)` and 0 on padding.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    rewards = rewards * mask_f
    batch, length = rewards.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(batch, dtype=values.dtype, device=values.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(length)):
        valid = mask_f[:, t]
        advantage = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = advantage * valid
        # a masked step leaves both as they were: the token before a hole sees the one after it
        next_value = torch.where(valid > 0, values[:, t], next_value)
        running = torch.where(valid > 0, advantage, running)
    returns = (advantages + values) * mask_f
    return advantages, returns


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss `0.5 * mean(max((V - R)^2, (clip(V, V_old ± c) - R)^2))` over the masked tokens.

    Args:
        values (`torch.Tensor`):
            Values of the critic being trained, `(B, T)`.
        old_values (`torch.Tensor`):
            Values of the rollout, `(B, T)`.
        returns (`torch.Tensor`):
            Value targets, `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask, `(B, T)`.
        cliprange_value (`float`):
            Clip range `c` of the value around the rollout's value.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(loss, clipfrac)`, where `clipfrac` is the fraction of tokens whose
        clipped term was the larger one.
    """
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clipfrac


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip policy loss, its clip fraction and the approximate KL `0.5 * E[(log π - log π_old)^2]`.

    The trainer's gradient goes through GRPO's loss; this is the same quantity, used for logging and tests.

    Args:
        logprobs (`torch.Tensor`):
            Per-token log-probabilities of the policy being trained, `(B, T)`.
        old_logprobs (`torch.Tensor`):
            Per-token log-probabilities of the rollout, `(B, T)`.
        advantages (`torch.Tensor`):
            Per-token advantages, `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask, `(B, T)`.
        cliprange (`float`):
            Clip range of the probability ratio.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: `(loss, clipfrac, approxkl)`.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(loss1, loss2), mask)
    clipfrac = masked_mean((loss2 > loss1).to(logprobs.dtype), mask)
    approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


class FixedKLController:
    """A constant KL coefficient.

    Args:
        kl_coef (`float`):
            The coefficient, kept as `value`.
    """

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive KL coefficient (Ziegler et al., 2019): moves `value` so that the measured KL approaches `target`.

    `value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon` after each rollout of `n_steps` samples.

    Args:
        kl_coef (`float`):
            Initial coefficient.
        target (`float`):
            Target per-sequence KL.
        horizon (`int`):
            Horizon, in samples.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target_kl > 0 and kl_horizon > 0; got {target} and {horizon}.")
        super().__init__(kl_coef)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
