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


# --------------------------------------------------------------------------- RLHF: PPO (SPEC §8)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is true (all of them without a mask); 0 when none is."""
    if mask is None:
        return values.float().mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`log(p / (1 - p))`, the inverse of σ, with p clamped to [eps, 1 - eps] so a certain
    score stays finite. PPO maps the reward probability Rc back to the logit scale before
    whitening (SPEC §8: R̃c = whiten(logit(Rc)))."""
    p = p.float().clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, *, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """`(x - mean) / std` over the (masked) entries, with the population std (SPEC §8
    whitens the reward; PPO also whitens advantages). shift_mean=False keeps the mean
    (scales only). Masked-out entries come back unchanged."""
    x = values.float()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else torch.where(mask.bool(), out, x)


def piecewise_reward(safety: torch.Tensor, helpfulness: torch.Tensor, is_safety_prompt: torch.Tensor,
                     threshold: float = 0.15) -> torch.Tensor:
    """The reward Rc of SPEC §8 from the two RMs' scores as probabilities (σ of the RM output):
    `Rs if is_safety(p) or Rs < 0.15 else Rh`. The 0.15 threshold (SPEC §8: precision 0.89,
    recall 0.55 on safety data) lets the safety RM veto a likely unsafe reply to any prompt."""
    use_safety = is_safety_prompt.bool() | (safety < threshold)
    return torch.where(use_safety, safety, helpfulness)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(πθ ‖ π0) from log-probs of tokens sampled from πθ.

    "k1": `log πθ - log π0` (unbiased, can be negative per token; the penalty of SPEC §8);
    "k3": `(r - 1) - log r` with `r = π0/πθ` (unbiased and never negative; for logging).
    """
    delta = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        return delta
    if kind == "k3":
        return torch.expm1(-delta) + delta
    raise ValueError(f"kind must be 'k1' or 'k3', got {kind!r}")


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards of the PPO objective `R = R̃c - β·KL(πθ ‖ π0)` (SPEC §8): every
    generated token pays `-β (log πθ - log π0)`; the last one of each row also gets the
    sequence's score R̃c. scores [B]; logprobs, ref_logprobs, mask [B, T] -> rewards [B, T]
    (0 where mask is false). Rows need at least one generated token."""
    mask = mask.float()
    rewards = -kl_coef * kl_estimate(logprobs, ref_logprobs) * mask
    last = (mask.cumsum(-1) * mask).argmax(-1)  # index of each row's last generated token
    rewards[torch.arange(rewards.shape[0]), last] += scores.float()
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) along each row:
    `δ_t = r_t + γ V_{t+1} - V_t`, `A_t = δ_t + γ λ A_{t+1}`, with V = 0 after the last
    token; returns = A + V (the value targets). rewards, values, mask [B, T] (mask marks
    generated tokens; rows are left-aligned) -> (advantages, returns), 0 outside the mask."""
    mask = mask.float()
    values = values.float() * mask
    rewards = rewards.float() * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise:
    mean over tokens of `max(-A r, -A clip(r, 1-ε, 1+ε))` with `r = exp(logπ - logπ_old)`,
    ε = 0.2 (SPEC §8). Returns (loss, clip fraction: share of tokens where clipping bites)."""
    ratio = torch.exp(logprobs.float() - old_logprobs.float())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction.detach()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """The clipped value loss of PPO implementations (OpenAI baselines):
    `0.5 · mean(max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²))` over tokens."""
    values = values.float()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
