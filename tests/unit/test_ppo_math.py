"""PPO math of SPEC §8 against values computed by hand."""

import math

import pytest
import torch

from llamaforge.losses import (gae, kl_estimate, kl_penalized_rewards, logit, masked_mean, piecewise_reward,
                               ppo_policy_loss, ppo_value_loss, whiten)


def test_logit_inverts_sigmoid_and_stays_finite():
    p = torch.tensor([0.5, 0.8, 0.1])
    # log(0.8/0.2) = log 4; log(0.1/0.9) = -log 9
    assert torch.allclose(logit(p), torch.tensor([0.0, math.log(4), -math.log(9)]), atol=1e-6)
    assert torch.isfinite(logit(torch.tensor([0.0, 1.0]))).all()


def test_whiten_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population var 1.25
    expected = (x - 2.5) / math.sqrt(1.25)
    assert torch.allclose(whiten(x), expected, atol=1e-6)
    assert torch.allclose(whiten(x, shift_mean=False), expected + 2.5, atol=1e-6)
    # Masked: only [1, 3] count (mean 2, var 1); the masked entry is left as it was.
    masked = whiten(torch.tensor([1.0, 99.0, 3.0]), torch.tensor([True, False, True]))
    assert torch.allclose(masked, torch.tensor([-1.0, 99.0, 1.0]), atol=1e-6)


def test_piecewise_reward_spec_8():
    safety = torch.tensor([0.9, 0.9, 0.10, 0.15])
    helpful = torch.tensor([0.3, 0.3, 0.70, 0.60])
    is_safety = torch.tensor([True, False, False, False])
    # safety prompt -> Rs; benign and safe -> Rh; Rs < 0.15 -> Rs (the veto); exactly 0.15 -> Rh
    assert piecewise_reward(safety, helpful, is_safety).tolist() == pytest.approx([0.9, 0.3, 0.10, 0.60])


def test_kl_estimates():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_estimate(lp, ref), torch.tensor([0.5, -1.0]))
    # k3 = (e^{-d} - 1) + d: d=0.5 -> 0.10653; d=-1 -> e - 2 = 0.71828
    assert torch.allclose(kl_estimate(lp, ref, "k3"), torch.tensor([math.exp(-0.5) - 1 + 0.5, math.e - 2]), atol=1e-6)
    assert (kl_estimate(torch.randn(50), torch.randn(50), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(lp, ref, "k9")


def test_kl_penalized_rewards_put_the_score_on_the_last_token():
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0, -3.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r = kl_penalized_rewards(torch.tensor([5.0, 7.0]), lp, ref, mask, kl_coef=0.1)
    # row 0: -0.1*[1, 0, 2] + [0, 0, 5]; row 1: -0.1*[-1, 0] + [0, 7], padding 0
    assert torch.allclose(r, torch.tensor([[-0.1, 0.0, 4.8], [0.1, 7.0, 0.0]]), atol=1e-6)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # δ2 = 1 - 0.7 = 0.3; δ1 = 0.7 - 0.6 = 0.1; δ0 = 0.6 - 0.5 = 0.1
    # A2 = 0.3; A1 = 0.1 + 0.5*0.3 = 0.25; A0 = 0.1 + 0.5*0.25 = 0.225
    assert torch.allclose(adv, torch.tensor([[0.225, 0.25, 0.3]]), atol=1e-6)
    assert torch.allclose(ret, adv + values, atol=1e-6)
    # γ = λ = 1: the advantage is the return-to-go minus the value
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv1, torch.tensor([[0.5, 0.4, 0.3]]), atol=1e-6)


def test_gae_ignores_padding_after_the_reply():
    rewards = torch.tensor([[0.0, 2.0, 9.0]])
    values = torch.tensor([[1.0, 1.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # A1 = 2 - 1.5 = 0.5; A0 = 0 + 1.5 - 1 + 0.5 = 1.0; padding stays 0
    assert torch.allclose(adv, torch.tensor([[1.0, 0.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.0, 2.0, 0.0]]))


def test_ppo_policy_loss_clips_by_hand():
    old = torch.zeros(1, 3)
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, clip_fraction = ppo_policy_loss(lp, old, adv, torch.ones(1, 3), clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped);
    # token 2: max(-2.2, -2.2) = -2.2. mean = (-1.2 + 0.8 - 2.2)/3
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert clip_fraction.item() == pytest.approx(2 / 3)
    # The gradient through a clipped token is zero.
    lp = lp.clone().requires_grad_(True)
    ppo_policy_loss(lp, old, adv, torch.ones(1, 3))[0].backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] == 0 and lp.grad[0, 2] != 0


def test_ppo_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    # token 0: max((1-2)^2, (0.5+0.2-2)^2 = 1.69) = 1.69; token 1: max(1, 1) = 1 -> 0.5 * mean = 0.6725
    assert ppo_value_loss(values, old, returns, torch.ones(1, 2), clip=0.2).item() == pytest.approx(0.6725)
    assert masked_mean(torch.tensor([1.0, 5.0]), torch.tensor([True, False])).item() == 1.0
