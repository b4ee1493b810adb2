"""The training objectives as small pure functions of tensors (no models, no state).

Each names the paper section it implements and is unit-tested against a hand-computed
value. Stages wrap them into loss functions of (model, batch) for the training core.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # target value that contributes no loss (padding, masked prompt tokens)


def masked_lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Next-token cross-entropy `-log p(target)`, counted only where `mask` is true.

    logits [..., V] are aligned with targets [...] (position t predicts targets[t], so the
    caller has already shifted by one). Positions where `mask` is False or the target is
    `ignore_index` contribute nothing: that is how SFT zeroes the loss on prompt tokens
    (SPEC §6) and GAtt on earlier turns (SPEC §9); pretraining counts every token (SPEC §5).
    Computed in fp32 whatever the logits' dtype. reduction: "mean" over counted positions
    (0 when there are none), "sum", or "none" (per position, 0 where not counted).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} must be targets {list(targets.shape)} plus a vocab dimension")
    keep = targets != ignore_index
    if mask is not None:
        if mask.shape != targets.shape:
            raise ValueError(f"mask {list(mask.shape)} must have the shape of targets {list(targets.shape)}")
        keep = keep & mask.bool()
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    per_token = F.cross_entropy(logits.float().flatten(0, -2), safe_targets.flatten(), reduction="none")
    per_token = per_token.view(targets.shape) * keep
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / keep.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# Reward-model margins m(rating) (SPEC §7), in the order of the annotator's ratings:
# significantly better, better, slightly better, negligibly better / unsure.
REWARD_MARGINS = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "small": (1.0, 2 / 3, 1 / 3, 0.0),
    "large": (3.0, 2.0, 1.0, 0.0),
}


def margin_ranking_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margins: torch.Tensor | float = 0.0,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """The reward model's binary ranking loss with a margin (SPEC §7, the paper's Eq. 2):
    `L = -log σ(r(x, y_chosen) - r(x, y_rejected) - m(rating))`.

    chosen_rewards, rejected_rewards [N] are the scalar scores of each pair; margins is a
    scalar or [N] (0 for "negligibly better" and for pairs without a rating). Computed in
    fp32 with logsigmoid, so it stays finite for any score gap. reduction: "mean", "sum" or
    "none" (per pair).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen rewards {list(chosen_rewards.shape)} and rejected rewards {list(rejected_rewards.shape)} "
            "must have the same shape (one score per pair)"
        )
    gap = chosen_rewards.float() - rejected_rewards.float()
    per_pair = -F.logsigmoid(gap - torch.as_tensor(margins, dtype=gap.dtype, device=gap.device))
    if reduction == "none":
        return per_pair
    if reduction == "sum":
        return per_pair.sum()
    if reduction == "mean":
        return per_pair.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
