"""The reward model's margin ranking loss (SPEC §7) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from llamaforge.losses import REWARD_MARGINS, margin_ranking_loss
from llamaforge.stages.reward import RATINGS, rating_margins


def test_margin_ranking_loss_hand_computed():
    # Gap r_c - r_r = 2 - 1 = 1. Without margin: -log σ(1) = log(1 + e^-1) = 0.313262.
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    assert margin_ranking_loss(chosen, rejected).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert margin_ranking_loss(chosen, rejected).item() == pytest.approx(0.3132617, rel=1e-6)
    # Margin 1 ("significantly better", small): -log σ(0) = log 2 = 0.693147.
    assert margin_ranking_loss(chosen, rejected, 1.0).item() == pytest.approx(0.6931472, rel=1e-6)
    # Margin 3 ("significantly better", large): -log σ(-2) = log(1 + e^2) = 2.126928.
    assert margin_ranking_loss(chosen, rejected, 3.0).item() == pytest.approx(2.1269280, rel=1e-6)


def test_margin_per_pair_and_reductions():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    margins = torch.tensor([1.0, 0.0, 1 / 3])
    # Pair 1: -log σ(0) = log 2; pair 2: log 2; pair 3: -log σ(-2 - 1/3) = log(1 + e^(7/3)).
    expected = [math.log(2), math.log(2), math.log(1 + math.exp(7 / 3))]
    per_pair = margin_ranking_loss(chosen, rejected, margins, reduction="none")
    assert per_pair.tolist() == pytest.approx(expected, rel=1e-6)
    assert margin_ranking_loss(chosen, rejected, margins, reduction="sum").item() == pytest.approx(sum(expected), rel=1e-6)
    assert margin_ranking_loss(chosen, rejected, margins).item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_a_margin_demands_a_larger_gap():
    chosen, rejected = torch.tensor([1.5]), torch.tensor([0.5])
    losses = [margin_ranking_loss(chosen, rejected, m).item() for m in (0.0, 1 / 3, 2 / 3, 1.0)]
    assert losses == sorted(losses) and losses[0] < losses[-1]


def test_loss_is_finite_for_huge_gaps_and_its_gradient_is_sigmoid():
    chosen = torch.tensor([-200.0, 200.0], requires_grad=True)
    rejected = torch.tensor([200.0, -200.0])
    loss = margin_ranking_loss(chosen, rejected, reduction="sum")
    assert torch.isfinite(loss) and loss.item() == pytest.approx(400.0, rel=1e-6)
    loss.backward()
    # d/dr_c of -log σ(r_c - r_r - m) is -(1 - σ(gap - m)): -1 for a hopeless pair, 0 for a sure one.
    assert chosen.grad.tolist() == pytest.approx([-1.0, 0.0], abs=1e-6)


def test_margin_tables_match_the_paper():
    # SPEC §7: small 1, 2/3, 1/3, 0; large 3, 2, 1, 0 (significantly, better, slightly, negligibly).
    assert REWARD_MARGINS["small"] == pytest.approx((1.0, 2 / 3, 1 / 3, 0.0))
    assert REWARD_MARGINS["large"] == (3.0, 2.0, 1.0, 0.0)
    assert REWARD_MARGINS["none"] == (0.0, 0.0, 0.0, 0.0)
    ratings = [*RATINGS, None]
    assert rating_margins(ratings, "large").tolist() == [3.0, 2.0, 1.0, 0.0, 0.0]
    assert rating_margins(ratings, "small").tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0])
    with pytest.raises(ValueError, match="reward_margin must be one of none, small, large"):
        rating_margins(ratings, "huge")


def test_mismatched_shapes_fail():
    with pytest.raises(ValueError, match="same shape"):
        margin_ranking_loss(torch.zeros(3), torch.zeros(2))
