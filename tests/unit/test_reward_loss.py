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


# --------------------------------------------------------------------------- safety RM calibration


def test_platt_scaling_recovers_a_known_logistic_model():
    from llamaforge.stages.reward import calibrate_scores

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40_000, generator=g) * 2
    labels = (torch.rand(40_000, generator=g) < torch.sigmoid(1.5 * scores - 2.0)).float().tolist()
    a, c = calibrate_scores(scores, labels)
    assert a == pytest.approx(1.5, abs=0.06) and c == pytest.approx(-2.0, abs=0.06)


def test_platt_fit_matches_the_label_mean_and_keeps_the_ranking():
    from llamaforge.stages.reward import calibrate_scores

    scores = torch.tensor([-3.0, -1.0, 0.5, 2.0, 4.0, -2.0, 1.0, 3.0])
    labels = [0, 0, 1, 0, 1, 1, 1, 1]
    a, c = calibrate_scores(scores, labels)
    # At the maximum-likelihood offset the mean probability equals the share of positive labels.
    assert torch.sigmoid(a * scores.double() + c).mean().item() == pytest.approx(sum(labels) / len(labels), abs=1e-4)
    assert a > 0  # a monotone map: the RM's order of replies is unchanged
    with pytest.raises(ValueError, match="both safe and unsafe"):
        calibrate_scores(scores, [1] * 8)


def test_labelled_responses_follow_the_safety_labels():
    from llamaforge.stages.reward import labelled_responses

    d = [{"role": "user", "content": "q"}]
    pairs = [{"dialog": d, "chosen": "a", "rejected": "b", "safety_label": "chosen_safe"},
             {"dialog": d, "chosen": "c", "rejected": "e", "safety_label": "both_safe"},
             {"dialog": d, "chosen": "f", "rejected": "g", "safety_label": "both_unsafe"},
             {"dialog": d, "chosen": "h", "rejected": "i", "safety_label": None}]
    helpful = [{"dialog": d, "chosen": "j", "rejected": "k"}]
    _, replies, labels = labelled_responses(pairs, helpful)
    assert list(zip(replies, labels)) == [("a", 1.0), ("b", 0.0), ("c", 1.0), ("e", 1.0), ("f", 0.0), ("g", 0.0),
                                          ("j", 1.0)]


def test_unsafe_detection_hand_computed():
    from llamaforge.stages.reward import unsafe_detection

    probabilities = [0.05, 0.10, 0.60, 0.90, 0.12, 0.95]
    labels = [0, 1, 0, 1, 0, 1]  # 1 = safe
    found = unsafe_detection(probabilities, labels, 0.15)
    # flagged: 0.05 (unsafe), 0.10 (safe), 0.12 (unsafe) -> precision 2/3; unsafe: 3, found 2 -> recall 2/3
    assert found == {"precision": round(2 / 3, 4), "recall": round(2 / 3, 4), "flagged_share": 0.5}
