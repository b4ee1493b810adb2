"""Loss functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from llamaforge.losses import IGNORE_INDEX, masked_lm_loss


def test_masked_lm_loss_hand_computed():
    # Two classes, logits (0, ln 3): p = (1/4, 3/4).
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    targets = torch.tensor([[1, 0]])
    per_token = masked_lm_loss(logits, targets, reduction="none")
    assert per_token.tolist()[0] == pytest.approx([-math.log(0.75), math.log(4.0)], rel=1e-6)
    assert masked_lm_loss(logits, targets).item() == pytest.approx((-math.log(0.75) + math.log(4.0)) / 2, rel=1e-6)
    assert masked_lm_loss(logits, targets, reduction="sum").item() == pytest.approx(-math.log(0.75) + math.log(4.0), rel=1e-6)


def test_uniform_logits_cost_log_vocab():
    logits = torch.zeros(3, 5, 17)
    targets = torch.randint(0, 17, (3, 5))
    assert masked_lm_loss(logits, targets).item() == pytest.approx(math.log(17), rel=1e-6)


def test_masked_positions_contribute_nothing():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0], [0.0, math.log(3.0)]]])
    targets = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[True, False, True]])
    expected_sum = -math.log(0.75) + math.log(4.0)
    assert masked_lm_loss(logits, targets, mask).item() == pytest.approx(expected_sum / 2, rel=1e-6)
    assert masked_lm_loss(logits, targets, mask, reduction="none")[0, 1].item() == 0.0
    # The ignore index masks the same way (how SFT marks prompt tokens, SPEC §6).
    ignored = torch.tensor([[1, IGNORE_INDEX, 0]])
    assert masked_lm_loss(logits, ignored).item() == pytest.approx(expected_sum / 2, rel=1e-6)


def test_nothing_counted_gives_zero_not_nan():
    logits = torch.randn(2, 3, 7)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert masked_lm_loss(logits, torch.zeros(2, 3, dtype=torch.long), mask).item() == 0.0


def test_bf16_logits_are_scored_in_fp32():
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 50) * 4
    targets = torch.randint(0, 50, (2, 8))
    low = logits.to(torch.bfloat16)
    loss = masked_lm_loss(low, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(masked_lm_loss(low.float(), targets).item(), abs=0)


def test_gradient_is_softmax_minus_one_hot_over_count():
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    masked_lm_loss(logits, torch.tensor([[2, 3]])).backward()
    expected = torch.full((1, 2, 4), 0.25 / 2)
    expected[0, 0, 2] -= 1 / 2
    expected[0, 1, 3] -= 1 / 2
    torch.testing.assert_close(logits.grad, expected)


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match="vocab dimension"):
        masked_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        masked_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        masked_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), reduction="avg")
