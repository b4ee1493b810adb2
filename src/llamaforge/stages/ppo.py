"""PPO (SPEC §8): maximise `R(g|p) = R̃c(g|p) - β·KL(πθ(g|p) ‖ π0(g|p))` on the policy's own
replies, with R̃c = whiten(logit(Rc)) and Rc the piecewise safety/helpfulness reward.

    llamaforge ppo policy=runs/demo/06-rejection/policy helpfulness_rm=runs/demo/03-reward-helpfulness \\
        safety_rm=runs/demo/04-reward-safety
    llamaforge ppo --config configs/ppo/paper.yaml policy=... helpfulness_rm=... safety_rm=...

Three models: the policy πθ (trained), the frozen reference π0 (the policy before PPO, for
the KL penalty) and the value model. The value model is a copy of the helpfulness reward
model (trunk + scalar head) read at every position, as in InstructGPT: it starts out
knowing what a good reply looks like, and training it never touches the policy (no
shared trunk, so the value loss cannot pull the policy's features). Without a helpfulness
RM (`helpfulness_rm=gold`) it is a copy of the policy's trunk with a fresh head.

Each iteration reads top to bottom: a batch of prompts, replies sampled with the KV cache
(temperature 1, so the sampled tokens' log-probs are the policy's), one forward pass of the
policy, the reference and the value model over prompt + reply, the rewards (RMs: the
training signal; gold judges: logged beside), per-token KL penalties, GAE, then one
gradient step per minibatch on the clipped policy and value losses. Optimizer, clipping,
non-finite skipping and checkpoints are the training core's (`trainer`).
"""

from __future__ import annotations

import copy
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..chat_format import encode_dialog
from ..config import config_to_dict
from ..eval.chat import record_dialog
from ..generate import SamplingParams, chat_replies
from ..losses import gae, kl_estimate, kl_penalized_rewards, logit, masked_mean, ppo_policy_loss, ppo_value_loss, whiten
from ..report import write_summary
from ..trainer import (LossOutput, Run, RunConfig, TrainConfig, TrainState, autocast, backward_and_step,
                       build_optimizer, list_checkpoints, load_checkpoint, resolve_device, resolve_precision,
                       save_checkpoint)
from .rejection import Scorer, gold_scorer, load_scorer, policy_tokenizer, run_cli, training_prompts

STAGE = "ppo"
VALUE_DIR = "value_model"


# --------------------------------------------------------------------------- model pieces


def response_logprobs(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each next token, entropy of each next-token distribution), both [B, T-1]:
    position t scores tokens[:, t+1]. Rows are right-padded (causal attention makes that exact)."""
    logits = model(tokens[:, :-1]).float()
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy


def token_values(value_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The value model's estimate at every position [B, T-1] (position t: the state before token t+1)."""
    hidden = value_model.trunk.hidden_states(tokens[:, :-1])
    return value_model.head(hidden).squeeze(-1).float()


def build_value_model(helpfulness_rm: str, policy_dir: str, seed: int = 0):
    """The value model: a copy of the helpfulness RM when there is one, else the policy's trunk
    with a fresh scalar head (see the module docstring)."""
    from .reward import RewardModel, load_reward_model, reward_init_state

    if helpfulness_rm and helpfulness_rm != "gold":
        return load_reward_model(helpfulness_rm)[0]
    from ..checkpoint import load_state_dict

    args, state = load_state_dict(policy_dir)
    with torch.device("meta"):
        model = RewardModel(args)
    model.load_state_dict(reward_init_state(state, args, seed), assign=True)
    return model.float()


# --------------------------------------------------------------------------- rollouts


def rollout(policy, reference, value_model, tokenizer, records: Sequence[dict], scorer: Scorer,
            params: SamplingParams, *, kl_coef: float, gamma: float, lam: float, batch_size: int,
            device: torch.device, precision: str) -> dict[str, Any]:
    """Sample replies to `records`, score them and compute everything PPO's update needs.

    Returns tensors [B, T-1] (tokens [B, T]): tokens, mask (generated tokens, EOS included:
    ending the answer is an action too), old_logprobs, ref_logprobs, old_values, advantages
    (whitened), returns; and per-reply lists replies, rm_reward, gold_reward, kl, length.
    """
    dialogs = [record_dialog(r) for r in records]
    policy.eval()
    completions = chat_replies(policy, tokenizer, dialogs, params, batch_size=batch_size)
    replies = [c.text or "" for c in completions]
    rows, spans = [], []
    for dialog, completion in zip(dialogs, completions):
        prompt = encode_dialog(tokenizer, dialog)
        reply = completion.tokens + ([tokenizer.eos_id] if completion.finish_reason == "stop" else [])
        reply = reply or [tokenizer.eos_id]
        rows.append((prompt + reply)[: policy.args.max_seq_len])
        spans.append((len(prompt), len(rows[-1])))
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    for i, (row, (start, end)) in enumerate(zip(rows, spans)):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, start - 1 : end - 1] = 1.0  # position t predicts token t + 1
    tokens, mask = tokens.to(device), mask.to(device)

    with torch.no_grad(), autocast(device, precision):
        old_logprobs, entropy = response_logprobs(policy, tokens)
        ref_logprobs, _ = response_logprobs(reference, tokens)
        old_values = token_values(value_model, tokens)
    rm_reward = torch.tensor(scorer(records, replies), dtype=torch.float32)
    gold = gold_scorer(records, replies)
    scores = whiten(logit(rm_reward)).to(device)  # SPEC §8: R̃c = whiten(logit(Rc))
    rewards = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns = gae(rewards, old_values, mask, gamma=gamma, lam=lam)
    advantages = whiten(advantages, mask) * mask
    kl = (kl_estimate(old_logprobs, ref_logprobs) * mask).sum(-1)
    return {
        "tokens": tokens, "mask": mask, "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs,
        "old_values": old_values * mask, "advantages": advantages, "returns": returns,
        "replies": replies, "rm_reward": rm_reward.tolist(), "gold_reward": gold, "kl": kl.tolist(),
        "length": mask.sum(-1).tolist(), "entropy": masked_mean(entropy, mask).item(),
    }


def minibatches(batch: dict[str, Any], size: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """The rollout's rows in shuffled minibatches of `size` (the last may be smaller)."""
    keys = ("tokens", "mask", "old_logprobs", "old_values", "advantages", "returns")
    order = torch.randperm(batch["tokens"].shape[0], generator=generator)
    out = []
    for start in range(0, len(order), size):
        rows = order[start : start + size].to(batch["tokens"].device)
        out.append({k: batch[k][rows] for k in keys})
    return out


def policy_loss_fn(clip: float):
    """loss_fn(policy, minibatch) for the training core: the clipped surrogate summed over tokens."""

    def loss_fn(model: nn.Module, mb: dict[str, torch.Tensor]) -> LossOutput:
        logprobs, _ = response_logprobs(model, mb["tokens"])
        loss, clip_fraction = ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb["mask"], clip)
        count = mb["mask"].sum()
        return LossOutput(total=loss * count, count=count, metrics={"clip_fraction": clip_fraction * count})

    return loss_fn


def value_loss_fn(clip: float):
    """loss_fn(value_model, minibatch): the clipped value loss summed over tokens."""

    def loss_fn(model: nn.Module, mb: dict[str, torch.Tensor]) -> LossOutput:
        values = token_values(model, mb["tokens"])
        count = mb["mask"].sum()
        return LossOutput(total=ppo_value_loss(values, mb["old_values"], mb["returns"], mb["mask"], clip) * count,
                          count=count)

    return loss_fn


class PromptStream:
    """Batches of prompt records, reshuffled each epoch; its position is saved with checkpoints."""

    def __init__(self, records: Sequence[dict], batch_size: int, seed: int):
        self.records, self.batch_size, self.seed = list(records), batch_size, seed
        self.epoch, self.position = 0, 0

    def next_batch(self) -> list[dict]:
        out = []
        while len(out) < self.batch_size:
            order = list(range(len(self.records)))
            random.Random(f"ppo/{self.seed}/{self.epoch}").shuffle(order)
            take = order[self.position : self.position + self.batch_size - len(out)]
            out += [self.records[i] for i in take]
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


# --------------------------------------------------------------------------- monitoring


def reward_hacking(rm_history: Sequence[float], gold_history: Sequence[float], window: int = 4,
                   tolerance: float = 0.01) -> bool:
    """RM reward rose while gold reward fell over the last `window` iterations: the policy is
    exploiting the reward model (a warning, not a stop: the held-out check decides)."""
    if len(rm_history) < window:
        return False
    rm, gold = rm_history[-window:], gold_history[-window:]
    return rm[-1] - rm[0] > tolerance and gold[-1] - gold[0] < -tolerance


def _paper_train() -> TrainConfig:
    # SPEC §8: AdamW (0.9, 0.95, eps 1e-5), weight decay 0.1, clip 1.0, constant LR 1e-6.
    return TrainConfig(lr=1e-6, schedule="constant", warmup_steps=0, max_steps=1, checkpoint_every=0, log_every=1)


@dataclass
class PPOConfig:
    """Defaults are the paper's (SPEC §8); configs/ppo/demo.yaml is the CPU demo."""

    policy: str = ""  # the policy to train, also the frozen reference π0 (SPEC §8: the policy before PPO)
    helpfulness_rm: str = ""  # reward model folder; "gold" = train on the gold judges (development only)
    safety_rm: str = ""  # reward model folder; empty = helpfulness only
    safety_threshold: float = 0.15  # Rc uses the safety RM below this probability (SPEC §8)
    kl_coef: float = 0.01  # β of the KL penalty (SPEC §8: 0.01 for 7B/13B, 0.005 for 34B/70B)
    iterations: int = 200  # PPO iterations (SPEC §8: 200-400)
    batch_size: int = 512  # prompts (replies) per iteration (SPEC §8)
    minibatch_size: int = 64  # rows per gradient step, one step per minibatch (SPEC §8)
    clip: float = 0.2  # PPO ratio clip ε (SPEC §8)
    value_clip: float = 0.2  # clip of the value update around the rollout's values
    value_lr: float = 0.0  # value model LR; 0 = train.lr
    gamma: float = 1.0  # GAE discount (the reward arrives once, at the end)
    lam: float = 0.95  # GAE λ
    temperature: float = 1.0  # rollout temperature (1: the sampled tokens' log-probs are the policy's)
    max_new_tokens: int = 64  # reply length cap
    decode_batch: int = 64  # rows decoded together
    eval_every: int = 10  # iterations between held-out evaluations (early stopping); 0 = only at the end
    eval_prompts: int = 64  # held-out prompts per evaluation (the world's eval split)
    patience: int = 3  # evaluations without a held-out RM reward gain before stopping; 0 = never stop early
    kl_limit: float = 10.0  # warn when the mean KL to the reference (nats per reply) exceeds this
    prompts: int = 0  # training prompts (0 = all of the world's)
    world_seed: int = 0  # seed of the built-in world
    world_size: Literal["tiny", "demo", "large"] = "demo"  # size of the built-in world
    seed: int = 0  # prompt order, sampling, minibatch order
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=_paper_train)  # optimizer; max_steps and schedule are PPO's own


def main(argv: list[str] | None = None) -> int:
    """`llamaforge ppo [--config FILE.yaml] [key=value ...]`."""
    return run_cli(PPOConfig, ppo, argv, "ppo", __doc__)


def held_out_prompts(world, n: int, seed: int) -> list[dict]:
    """`n` eval-split prompts of every kind, for early stopping."""
    records = [r for kind in ("helpful", "adversarial", "borderline") for r in world.prompt_records(kind, "eval")]
    random.Random(f"ppo-eval/{seed}").shuffle(records)
    return records[:n]


def evaluate_policy(policy, tokenizer, records: Sequence[dict], scorer: Scorer, max_new_tokens: int,
                    batch_size: int) -> dict[str, float]:
    """Greedy replies to held-out prompts: mean RM reward (the stopping signal) and gold reward."""
    policy.eval()
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    replies = [c.text or "" for c in chat_replies(policy, tokenizer, [record_dialog(r) for r in records], params,
                                                  batch_size=batch_size)]
    return {"rm_reward": statistics.fmean(scorer(records, replies)), "gold_reward": statistics.fmean(gold_scorer(records, replies))}


def ppo(cfg: PPOConfig, *, scorer: Scorer | None = None, world=None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) PPO as `cfg` says; `scorer` replaces the RMs named in `cfg`.
    Returns {"path": the run folder (load_model reads its final policy), "run", "summary", "history"}."""
    from ..checkpoint import load_model

    started = time.perf_counter()
    if not cfg.policy:
        raise ValueError("policy is required: the model PPO starts from (and keeps as the KL reference)")
    tokenizer_path, tokenizer = policy_tokenizer(cfg.policy)
    scorer = scorer or load_scorer(cfg.helpfulness_rm, cfg.safety_rm, safety_threshold=cfg.safety_threshold)
    if world is None:
        from ..world import World

        world = World.generate(seed=cfg.world_seed, size=cfg.world_size)
    run_cfg = cfg.run if out_dir is None else dataclasses.replace(cfg.run, dir=str(out_dir))
    run = Run.start(run_cfg, STAGE, config_to_dict(cfg), seeds={"ppo": cfg.seed}, parent=cfg.policy)

    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    train_cfg = dataclasses.replace(cfg.train, grad_accum=1)
    policy = load_model(cfg.policy, device=device)
    reference = load_model(cfg.policy, device=device).requires_grad_(False)
    value_model = build_value_model(cfg.helpfulness_rm, cfg.policy, cfg.seed).to(device)
    policy_opt = build_optimizer(policy, train_cfg, device)
    value_opt = build_optimizer(value_model, dataclasses.replace(train_cfg, lr=cfg.value_lr or train_cfg.lr), device)
    stream = PromptStream(training_prompts(world, cfg.prompts, cfg.seed), cfg.batch_size, cfg.seed)
    held_out = held_out_prompts(world, cfg.eval_prompts, cfg.seed)

    state = TrainState()
    checkpoints = list_checkpoints(run.path) if run.cfg.resume else []
    if checkpoints:
        from .reward import load_reward_model

        state = load_checkpoint(checkpoints[-1], policy, policy_opt, stream)
        if (run.path / VALUE_DIR).exists():
            value_model = load_reward_model(run.path / VALUE_DIR)[0].to(device)
            value_opt = build_optimizer(value_model, dataclasses.replace(train_cfg, lr=cfg.value_lr or train_cfg.lr), device)
    generator = torch.Generator().manual_seed(cfg.seed + state.step)
    params = SamplingParams(temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens)
    policy_loss, value_loss = policy_loss_fn(cfg.clip), value_loss_fn(cfg.value_clip)

    def checkpoint_now() -> None:
        save_checkpoint(run.path, policy, policy_opt, state, stream, train_cfg.keep_last, {"tokenizer.model": tokenizer_path})
        value_model.save(run.path / VALUE_DIR, tokenizer_path, role="PPO value model", step=state.step)

    def held_out_eval() -> dict[str, float]:
        result = evaluate_policy(policy, tokenizer, held_out, scorer, cfg.max_new_tokens, cfg.decode_batch)
        run.log({"step": state.step, **{f"val_{k}": v for k, v in result.items()}})
        return result

    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = [{"step": state.step, **held_out_eval()}]
    best = {"rm_reward": evals[0]["rm_reward"], "step": state.step, "weights": copy.deepcopy(policy.state_dict())}
    warnings: list[str] = []
    stale = 0
    stopped_early = False
    while state.step < cfg.iterations:
        records = stream.next_batch()
        batch = rollout(policy, reference, value_model, tokenizer, records, scorer,
                        dataclasses.replace(params, seed=cfg.seed * 100003 + state.step), kl_coef=cfg.kl_coef,
                        gamma=cfg.gamma, lam=cfg.lam, batch_size=cfg.decode_batch, device=device, precision=precision)
        policy.train()
        value_model.train()
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "grad_norm": []}
        for mb in minibatches(batch, cfg.minibatch_size, generator):  # one gradient step per minibatch (SPEC §8)
            p = backward_and_step(policy, policy_opt, iter([mb]), policy_loss, train_cfg, train_cfg.lr, device, precision)
            v = backward_and_step(value_model, value_opt, iter([mb]), value_loss, train_cfg,
                                  cfg.value_lr or train_cfg.lr, device, precision)
            stats["policy_loss"].append(p.loss)
            stats["clip_fraction"].append(p.metrics["clip_fraction"])
            stats["grad_norm"].append(p.grad_norm)
            stats["value_loss"].append(v.loss)
        state.step += 1
        record = {
            "step": state.step, "rm_reward": statistics.fmean(batch["rm_reward"]),
            "gold_reward": statistics.fmean(batch["gold_reward"]), "kl": statistics.fmean(batch["kl"]),
            "entropy": batch["entropy"], "response_length": statistics.fmean(batch["length"]),
            "lr": train_cfg.lr, **{k: statistics.fmean(v) for k, v in stats.items()},
        }
        history.append(record)
        for warning in iteration_warnings(history, cfg.kl_limit):
            warnings.append(warning)
            record.setdefault("warnings", []).append(warning)
            print(f"ppo warning: {warning}", file=sys.stderr)
        run.log(record)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.iterations:
            evals.append({"step": state.step, **held_out_eval()})
            if evals[-1]["rm_reward"] > best["rm_reward"]:
                best, stale = {"rm_reward": evals[-1]["rm_reward"], "step": state.step,
                               "weights": copy.deepcopy(policy.state_dict())}, 0
            else:
                stale += 1
                if cfg.patience and stale >= cfg.patience:
                    stopped_early = True
                    break
        if train_cfg.checkpoint_every and state.step % train_cfg.checkpoint_every == 0:
            checkpoint_now()
    if not stopped_early:
        evals.append({"step": state.step, **held_out_eval()})
        if evals[-1]["rm_reward"] >= best["rm_reward"]:
            best = {"rm_reward": evals[-1]["rm_reward"], "step": state.step, "weights": None}
    if best["weights"] is not None:  # early stopping keeps the policy of the best held-out evaluation
        policy.load_state_dict(best["weights"])
    checkpoint_now()
    run.update(outputs={"policy": str(run.path), "best_step": best["step"], "stopped_early": stopped_early})
    run.close("finished")
    summary = ppo_summary(history, evals, best["step"], warnings, cfg, time.perf_counter() - started)
    write_summary(run.path, summary)
    return {"path": run.path, "run": run.path, "summary": summary, "history": history, "evals": evals}


def iteration_warnings(history: Sequence[dict], kl_limit: float) -> list[str]:
    """Reward hacking (RM up, gold down) and a runaway KL, judged on the latest iteration."""
    out = []
    step = history[-1]["step"]
    if reward_hacking([h["rm_reward"] for h in history], [h["gold_reward"] for h in history]):
        out.append(f"iteration {step}: RM reward rises while gold reward falls (reward hacking?)")
    if history[-1]["kl"] > kl_limit:
        out.append(f"iteration {step}: KL to the reference is {history[-1]['kl']:.2f} nats per reply "
                   f"(limit {kl_limit}); raise kl_coef or lower train.lr")
    return out


def kept_policy_kl(history: list[dict], best_step: int) -> float:
    """KL to the reference of the policy early stopping kept (after `best_step` updates): the
    rollouts of iteration best_step + 1 were sampled from it. When the last policy is kept no
    rollout sampled it, and the last iteration's (one update older) stands in."""
    sampled_from_kept = [h["kl"] for h in history if h["step"] == best_step + 1]
    if sampled_from_kept:
        return sampled_from_kept[0]
    return history[-1]["kl"] if history else 0.0


def ppo_summary(history: list[dict], evals: list[dict], best_step: int, warnings: list[str], cfg: PPOConfig,
                seconds: float) -> dict[str, Any]:
    """summary.json: rewards (RM and gold), KL and losses per iteration, held-out evaluations."""
    steps = [h["step"] for h in history]
    first, kept = evals[0], next((e for e in evals if e["step"] == best_step), evals[-1])
    last_kl = history[-1]["kl"] if history else 0.0
    kl_kept = kept_policy_kl(history, best_step)
    metrics = {
        "iterations": len(history), "best_step": best_step, "kl_coef": cfg.kl_coef,
        "held_out/rm_reward_before": first["rm_reward"], "held_out/rm_reward_after": kept["rm_reward"],
        "held_out/gold_reward_before": first["gold_reward"], "held_out/gold_reward_after": kept["gold_reward"],
        "kl_kept": kl_kept, "kl_final": last_kl, "kl_max": max((h["kl"] for h in history), default=0.0),
        "warnings": len(warnings),
    }
    effect = (f"PPO ({len(history)} iterations, kept step {best_step}): held-out RM reward {first['rm_reward']:.3f} -> "
              f"{kept['rm_reward']:.3f}, gold {first['gold_reward']:.3f} -> {kept['gold_reward']:.3f}, "
              f"KL to the reference {kl_kept:.2f} nats per reply for the kept policy "
              f"({last_kl:.2f} in the last iteration's rollouts)")

    def series(key: str) -> dict[str, list]:
        return {"x": steps, "y": [h[key] for h in history]}

    plots = [
        {"title": "PPO: training rewards per iteration (RM = the signal, gold = the measuring stick)", "kind": "line",
         "xlabel": "iteration", "ylabel": "reward (probability)",
         "series": {"RM reward": series("rm_reward"), "gold reward": series("gold_reward")}},
        {"title": "PPO: KL to the reference (nats per reply)", "kind": "line", "xlabel": "iteration",
         "ylabel": "KL", "series": {"KL": series("kl")}},
        {"title": "PPO: losses, clip fraction and entropy", "kind": "line", "xlabel": "iteration", "ylabel": "value",
         "series": {k: series(k) for k in ("value_loss", "policy_loss", "clip_fraction", "entropy")}},
        {"title": "PPO: held-out rewards (greedy; early stopping reads the RM)", "kind": "line", "xlabel": "iteration",
         "ylabel": "reward", "series": {"RM": {"x": [e["step"] for e in evals], "y": [e["rm_reward"] for e in evals]},
                                        "gold": {"x": [e["step"] for e in evals], "y": [e["gold_reward"] for e in evals]}}},
    ]
    tables = [{"title": "PPO held-out evaluations", "columns": ["iteration", "RM reward", "gold reward"],
               "rows": [[e["step"], round(e["rm_reward"], 4), round(e["gold_reward"], 4)] for e in evals]}]
    return {"stage": STAGE, "effect": effect, "seconds": round(seconds, 2), "metrics": metrics, "tables": tables,
            "plots": plots, "warnings": warnings}
