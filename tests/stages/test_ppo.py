"""PPO on a tiny random model: rollouts agree with the KV-cache decode, the KL to an identical
reference is zero, the update raises a reward the model can reach, early stopping keeps the
best policy, and the run folder holds a loadable policy and summary.json."""

from __future__ import annotations

import json

import pytest
import torch

from llamaforge import load_model
from llamaforge.generate import SamplingParams
from llamaforge.stages import ppo as stage
from llamaforge.trainer import RunConfig, TrainConfig

from .test_reward import tiny  # noqa: F401  (the tiny world, tokenizer and model of the reward tests)



def letter_share(records, replies):
    """A reward the tiny model can reach: the share of 'e' among the reply's letters."""
    out = []
    for reply in replies:
        letters = [c for c in reply.lower() if c.isalpha()]
        out.append(letters.count("e") / len(letters) if letters else 0.0)
    return out


def test_rollout_matches_the_decode_and_the_kl_to_a_copy_is_zero(tiny):
    policy, reference = load_model(tiny["lm"]), load_model(tiny["lm"])
    value_model = stage.build_value_model("gold", str(tiny["lm"]))
    records = tiny["world"].prompt_records("helpful", "train")[:6]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=3)
    batch = stage.rollout(policy, reference, value_model, tiny["tokenizer"], records, letter_share, params,
                          kl_coef=0.1, gamma=1.0, lam=0.95, batch_size=4, device=torch.device("cpu"), precision="fp32")
    from llamaforge.generate import chat_replies
    from llamaforge.eval.chat import record_dialog

    completions = chat_replies(policy, tiny["tokenizer"], [record_dialog(r) for r in records], params, batch_size=4)
    mask = batch["mask"].bool()
    for i, completion in enumerate(completions):
        generated = len(completion.tokens) + (completion.finish_reason == "stop")
        assert mask[i].sum() == generated  # the reply's tokens, EOS included when it stopped
        # The full forward pass gives the log-probs the KV-cache decode sampled with.
        row = batch["old_logprobs"][i][mask[i]][: len(completion.tokens)]
        assert torch.allclose(row, torch.tensor(completion.logprobs), atol=1e-4)
    assert batch["kl"] == pytest.approx([0.0] * 6, abs=1e-6)
    assert (batch["advantages"][~mask] == 0).all() and (batch["returns"][~mask] == 0).all()
    assert batch["advantages"][mask].mean().abs() < 1e-4  # whitened


def test_ppo_raises_a_reachable_reward_and_writes_a_loadable_policy(tiny, tmp_path):
    cfg = stage.PPOConfig(policy=str(tiny["lm"]), helpfulness_rm="gold", iterations=10, batch_size=32, minibatch_size=8,
                          kl_coef=0.01, max_new_tokens=12, eval_every=0, eval_prompts=8, patience=0, world_size="tiny",
                          train=TrainConfig(lr=3e-3, schedule="constant", warmup_steps=0, max_steps=1, checkpoint_every=0),
                          run=RunConfig(progress=False))
    result = stage.ppo(cfg, scorer=letter_share, world=tiny["world"], out_dir=tmp_path / "ppo")
    history = result["history"]
    assert len(history) == 10
    first, last = sum(h["rm_reward"] for h in history[:2]) / 2, sum(h["rm_reward"] for h in history[-2:]) / 2
    assert last > first + 0.02, [h["rm_reward"] for h in history]
    assert history[-1]["kl"] > 0  # the policy moved away from the reference
    for key in ("gold_reward", "entropy", "response_length", "clip_fraction", "value_loss"):
        assert key in history[-1]
    policy = load_model(result["path"])  # the run folder's final checkpoint is the policy
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["stage"] == "ppo" and summary["metrics"]["iterations"] == 10 and "KL" in summary["effect"]
    lines = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert sum("rm_reward" in line for line in lines) == 10
    assert not torch.equal(policy.output.weight, load_model(tiny["lm"]).output.weight)


def test_early_stopping_keeps_the_best_held_out_policy(tiny, tmp_path):
    calls = {"n": 0}

    def falling(records, replies):
        # Held-out evaluations (greedy, eval split) see a reward that only falls, so the first
        # evaluation stays the best and PPO stops after `patience` evaluations.
        calls["n"] += 1
        return [1.0 / calls["n"]] * len(replies)

    cfg = stage.PPOConfig(policy=str(tiny["lm"]), helpfulness_rm="gold", iterations=20, batch_size=8, minibatch_size=4,
                          max_new_tokens=6, eval_every=1, eval_prompts=4, patience=2, world_size="tiny",
                          train=TrainConfig(lr=1e-2, schedule="constant", warmup_steps=0, max_steps=1, checkpoint_every=0),
                          run=RunConfig(progress=False))
    result = stage.ppo(cfg, scorer=falling, world=tiny["world"], out_dir=tmp_path / "ppo")
    assert len(result["history"]) == 2 and result["summary"]["metrics"]["best_step"] == 0
    kept = load_model(result["path"])
    assert torch.equal(kept.output.weight, load_model(tiny["lm"]).output.weight)  # the untouched start was best


def test_reward_hacking_and_kl_warnings():
    assert stage.reward_hacking([0.1, 0.2, 0.3, 0.4], [0.5, 0.45, 0.4, 0.3])
    assert not stage.reward_hacking([0.1, 0.2, 0.3, 0.4], [0.3, 0.35, 0.4, 0.5])
    assert not stage.reward_hacking([0.1, 0.4], [0.5, 0.1])  # too few iterations to judge
    history = [{"step": i + 1, "rm_reward": 0.1 * i, "gold_reward": 0.5 - 0.1 * i, "kl": 1.0} for i in range(4)]
    assert any("reward hacking" in w for w in stage.iteration_warnings(history, kl_limit=10.0))
    history[-1]["kl"] = 50.0
    assert any("KL" in w and "kl_coef" in w for w in stage.iteration_warnings(history, kl_limit=10.0))


def test_a_missing_policy_is_an_error_for_people(tmp_path):
    with pytest.raises(ValueError, match="policy is required"):
        stage.ppo(stage.PPOConfig())
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        stage.ppo(stage.PPOConfig(policy=str(tmp_path)))


def test_reported_kl_is_the_kept_policys():
    # Iteration i's rollouts come from the policy after i - 1 updates.
    history = [{"step": i, "kl": kl} for i, kl in ((1, 0.0), (2, 0.3), (3, 0.9), (4, 2.0))]
    assert stage.kept_policy_kl(history, 0) == 0.0  # the starting policy (rollouts of iteration 1)
    assert stage.kept_policy_kl(history, 2) == 0.9  # after 2 updates: sampled in iteration 3
    assert stage.kept_policy_kl(history, 4) == 2.0  # the last policy: no rollout of its own
    assert stage.kept_policy_kl([], 0) == 0.0
    evals = [{"step": s, "rm_reward": r, "gold_reward": 0.1} for s, r in ((0, 0.5), (2, 0.7), (4, 0.6))]
    summary = stage.ppo_summary([{**h, "rm_reward": 0.5, "gold_reward": 0.1, "entropy": 1.0, "response_length": 9,
                                  "policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "grad_norm": 1.0}
                                 for h in history], evals, 2, [], stage.PPOConfig(), 1.0)
    assert summary["metrics"]["kl_kept"] == 0.9 and summary["metrics"]["kl_final"] == 2.0
    assert "0.90 nats per reply for the kept policy (2.00 in the last" in summary["effect"]
