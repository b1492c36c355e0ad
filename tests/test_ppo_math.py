"""PPO math against plain Python reference loops: GAE and returns, whitening, KL-in-reward, the clipped losses."""

from __future__ import annotations

import math
import random

import pytest
import torch

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


def ragged_batch(batch=6, length=9, seed=0):
    """Random rewards/values with right padding: row lengths 1..length, garbage in the padding."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [1, length] + [random.Random(seed + i).randint(1, length) for i in range(batch - 2)]
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    rewards = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    return rewards, values, mask, lengths


def reference_gae(rewards, values, lengths, gamma, lam):
    """Textbook GAE, one sequence at a time, on the valid tokens only."""
    advantages, returns = [], []
    for row, n in enumerate(lengths):
        r = rewards[row, :n].tolist()
        v = values[row, :n].tolist()
        adv = [0.0] * n
        last = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * next_v - v[t]
            last = delta + gamma * lam * last
            adv[t] = last
        advantages.append(adv)
        returns.append([a + b for a, b in zip(adv, v)])
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_and_returns_match_a_python_reference_loop_on_ragged_masks(gamma, lam, seed):
    rewards, values, mask, lengths = ragged_batch(seed=seed)
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = reference_gae(rewards, values, lengths, gamma, lam)
    for row, n in enumerate(lengths):
        assert advantages[row, :n].tolist() == pytest.approx(ref_adv[row], abs=1e-10)
        assert returns[row, :n].tolist() == pytest.approx(ref_ret[row], abs=1e-10)
        assert advantages[row, n:].abs().sum().item() == 0.0  # padding carries nothing
        assert returns[row, n:].abs().sum().item() == 0.0


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    rewards, values, mask, lengths = ragged_batch(seed=5)
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, 1.0, 1.0)
    for row, n in enumerate(lengths):
        to_go = [sum(rewards[row, t:n].tolist()) for t in range(n)]
        assert returns[row, :n].tolist() == pytest.approx(to_go, abs=1e-10)
        minus_value = [g - v for g, v in zip(to_go, values[row, :n].tolist())]
        assert advantages[row, :n].tolist() == pytest.approx(minus_value, abs=1e-10)


def test_whitening_gives_zero_mean_unit_variance_over_valid_tokens_and_zero_padding():
    rewards, _, mask, _ = ragged_batch(seed=3)
    scaled = rewards * 7.0 + 3.0
    white = masked_whiten(scaled, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert white[mask == 0].abs().sum().item() == 0.0
    kept = masked_whiten(scaled, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(scaled, mask).item(), abs=1e-9)
    valid = scaled[mask.bool()]
    assert masked_var(scaled, mask).item() == pytest.approx(valid.var(unbiased=True).item(), rel=1e-9)


def test_kl_penalty_sits_on_every_token_and_the_score_on_the_last_valid_token():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logps = torch.full((3, 5), -1.0)
    ref = torch.full((3, 5), -1.5)
    scores = torch.tensor([2.0, -1.0, 5.0])
    rewards, non_score, kl = kl_penalized_rewards(logps, ref, scores, mask, kl_coef=0.2)
    assert torch.allclose(kl, 0.5 * mask.float())
    assert torch.allclose(non_score, -0.1 * mask.float())
    expected = -0.1 * mask.float()
    expected[0, 2] += 2.0
    expected[1, 4] += -1.0
    expected[2, 0] += 5.0
    assert torch.allclose(rewards, expected)
    assert rewards[mask == 0].abs().sum().item() == 0.0


def test_clipped_value_loss_takes_the_larger_of_clipped_and_unclipped_error():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 9.0]])
    new = torch.tensor([[0.5, 2.0, 9.0]])  # token 3 is padding
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac = clipped_value_loss(new, old, returns, mask, cliprange_value=0.2)
    # token 1: unclipped (0.5-1)^2=0.25, clipped (0.2-1)^2=0.64 -> 0.64 (clipped wins)
    # token 2: unclipped (2-1)^2=1.0, clipped (0.2-1)^2=0.64 -> 1.0
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_clipped_policy_loss_clips_the_ratio_and_reports_approx_kl():
    old = torch.zeros(1, 2)
    new = torch.tensor([[math.log(1.5), math.log(0.5)]])
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, clipfrac, approxkl = clipped_policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 1: min(1.5, 1.2) * 1 -> -1.2 ; token 2: min(0.5, 0.8) -> -0.5
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approxkl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_adaptive_kl_controller_raises_coef_above_target_and_lowers_it_below():
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    ctl.update(10.0, n_steps=10)  # error clipped at +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(0.0, n_steps=10)  # error clipped at -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 10)
    assert fixed.value == 0.3
    with pytest.raises(ValueError, match="target_kl"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


# ------------------------------------------------------------------------- masks with holes (tool results inside)
def test_score_sits_on_the_last_unmasked_token_when_a_tool_result_leaves_a_hole():
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0, 0, 0]])
    scores = torch.tensor([1.0, 3.0])
    rewards, _, _ = kl_penalized_rewards(torch.zeros(2, 8), torch.zeros(2, 8), scores, mask, kl_coef=0.1)
    expected = torch.zeros(2, 8)
    expected[0, 6] = 1.0  # not index 3 (sum of the mask minus one), a masked tool token
    expected[1, 2] = 3.0
    assert torch.equal(rewards, expected)


def test_gae_carries_values_and_advantages_across_a_hole_hand_computed():
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0]])
    logps, ref = torch.full((1, 8), -1.0, dtype=torch.float64), torch.full((1, 8), -1.5, dtype=torch.float64)
    rewards, _, _ = kl_penalized_rewards(logps, ref, torch.tensor([1.0]), mask, kl_coef=0.2)
    values = torch.tensor([[0.5, 0.4, 9.0, 9.0, 9.0, 0.3, 0.2, 9.0]], dtype=torch.float64)  # 9.0: masked, unused
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma=1.0, lam=0.5)
    # valid tokens 0, 1, 5, 6: rewards -0.1, -0.1, -0.1, -0.1 + 1.0; values 0.5, 0.4, 0.3, 0.2
    # t=6: 0.9 - 0.2 = 0.7;  t=5: -0.1 + 0.2 - 0.3 + 0.5 * 0.7 = 0.15
    # t=1: -0.1 + 0.3 - 0.4 + 0.5 * 0.15 = -0.125 (next value across the hole: 0.3, not 9.0 or 0)
    # t=0: -0.1 + 0.4 - 0.5 + 0.5 * -0.125 = -0.2625
    assert advantages[0].tolist() == pytest.approx([-0.2625, -0.125, 0, 0, 0, 0.15, 0.7, 0])
    assert returns[0].tolist() == pytest.approx([0.2375, 0.275, 0, 0, 0, 0.45, 0.9, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_with_holes_equals_gae_over_the_unmasked_tokens_alone(seed):
    rewards, values, _, _ = ragged_batch(seed=seed)
    gen = torch.Generator().manual_seed(100 + seed)
    mask = (torch.rand(rewards.shape, generator=gen) > 0.35).long()
    mask[1] = 0  # a row with no unmasked token
    gamma, lam = 0.9, 0.8
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma, lam)
    for row in range(mask.size(0)):
        kept = mask[row].nonzero().flatten()
        ref_adv, ref_ret = reference_gae(
            rewards[row : row + 1, kept], values[row : row + 1, kept], [len(kept)], gamma, lam
        )
        assert advantages[row, kept].tolist() == pytest.approx(ref_adv[0], abs=1e-10)
        assert returns[row, kept].tolist() == pytest.approx(ref_ret[0], abs=1e-10)
        assert advantages[row][mask[row] == 0].abs().sum().item() == 0.0
        assert returns[row][mask[row] == 0].abs().sum().item() == 0.0
