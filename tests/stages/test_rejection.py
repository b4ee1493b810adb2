"""Rejection sampling on a tiny model: the max-vs-median curve by hand, the best of K is the
reward's argmax among finished replies, Rc from two reward models follows SPEC §8, kept samples
of earlier rounds stay, and the stage fine-tunes and writes its summary."""

from __future__ import annotations

import json

import pytest
import torch

from llamaforge import load_model
from llamaforge.stages import rejection as stage
from llamaforge.trainer import RunConfig, TrainConfig

from .test_reward import tiny  # noqa: F401  (the tiny world, tokenizer and model of the reward tests)



def test_max_median_curve_by_hand():
    curve = stage.max_median_curve([[0.1, 0.5, 0.3], [0.4, 0.2, 0.9]])
    assert curve["k"] == [1, 2, 3]
    # k=1: max = median = first sample; k=2: max (0.5, 0.4), median (0.3, 0.3); k=3: max (0.5, 0.9), median (0.3, 0.4)
    assert curve["max"] == pytest.approx([0.25, 0.45, 0.7])
    assert curve["median"] == pytest.approx([0.25, 0.3, 0.35])


def test_best_of_k_keeps_the_highest_reward_among_finished_replies(tiny):
    model = load_model(tiny["lm"])
    records = tiny["world"].prompt_records("helpful", "train")[:5]

    def length_reward(records, replies):
        return [min(1.0, len(r) / 100) for r in replies]

    result = stage.best_of_k(model, tiny["tokenizer"], records, length_reward, k=4, temperature=1.0,
                             max_new_tokens=24, seed=1)
    assert len(result["rewards"]) == 5 and all(len(row) == 4 for row in result["rewards"])
    for best, row in zip(result["best"], result["rewards"]):
        if best["finished"]:
            assert best["reward"] == pytest.approx(max(length_reward(None, [best["reply"]])))
        assert best["reward"] in row
    curve = result["curve"]
    assert all(m >= md for m, md in zip(curve["max"], curve["median"]))
    assert curve["max"] == sorted(curve["max"])  # the best of more samples is never worse


def test_unfinished_replies_only_win_when_nothing_finished(tiny, monkeypatch):
    from llamaforge.generate import Completion

    def fake_sample_k(model, tokenizer, records, k, params, batch_size=32):
        return [[Completion([1] * 9, "length", "cut off"), Completion([1], "stop", "done")] for _ in records]

    monkeypatch.setattr(stage, "sample_k", fake_sample_k)
    records = tiny["world"].prompt_records("helpful", "train")[:2]
    result = stage.best_of_k(None, None, records, lambda rs, ys: [0.9 if y == "cut off" else 0.2 for y in ys],
                             k=2, temperature=1.0)
    assert [b["reply"] for b in result["best"]] == ["done", "done"]
    assert [b["reward"] for b in result["best"]] == [0.2, 0.2]


def test_reward_model_scorer_is_the_piecewise_reward():
    class Fixed:
        def __init__(self, logits):
            self.logits = torch.tensor(logits)

        def score(self, tokenizer, dialogs, replies, batch_size=32):
            return self.logits[: len(replies)]

    records = [{"prompt": "a", "kind": "adversarial"}, {"prompt": "b", "kind": "helpful"},
               {"prompt": "c", "kind": "helpful"}]
    # σ(2) = 0.881 safety on a safety prompt; σ(0) = 0.5 safety -> helpfulness σ(1); σ(-3) = 0.047 < 0.15 -> safety
    scorer = stage.reward_model_scorer(Fixed([1.0, 1.0, 1.0]), Fixed([2.0, 0.0, -3.0]), tokenizer=None)
    s = torch.sigmoid(torch.tensor([2.0, 1.0, -3.0])).tolist()
    assert scorer(records, ["x", "y", "z"]) == pytest.approx(s)
    # Each RM reads the replies through its own tokenizer.
    seen = []

    class Recording(Fixed):
        def score(self, tokenizer, dialogs, replies, batch_size=32):
            seen.append(tokenizer)
            return super().score(tokenizer, dialogs, replies, batch_size)

    stage.reward_model_scorer(Recording([1.0] * 3), Recording([2.0] * 3), "helpful-tok",
                              safety_tokenizer="safety-tok")(records, ["x", "y", "z"])
    assert seen == ["helpful-tok", "safety-tok"]
    only_helpful = stage.reward_model_scorer(Fixed([1.0, 0.0, -1.0]), None, tokenizer=None)
    assert only_helpful(records, ["x", "y", "z"]) == pytest.approx(torch.sigmoid(torch.tensor([1.0, 0.0, -1.0])).tolist())


def test_gold_scorer_and_pools():
    record = {"id": "r1", "kind": "helpful", "prompt": "What is 2 + 2?", "answer": "4", "short_answer": "4",
              "required": [["4"]], "numeric": True}
    best = [{"record": record, "reply": "4", "reward": 0.9, "gold": 1.0, "finished": True},
            {"record": record, "reply": "5", "reward": 0.1, "gold": 0.0, "finished": False}]
    dialogs = stage.dialogs_of(best)
    assert len(dialogs) == 2 and dialogs[0]["messages"][-1] == {"role": "assistant", "content": "4"}
    earlier = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    pool = stage.merge_pools(earlier, dialogs + dialogs)
    assert pool[0] == earlier[0] and len(pool) == 3  # earlier rounds stay; duplicates kept once


def test_pairwise_agreement_by_hand():
    # Prompt 1: pair (0,1) agrees, (0,2) and (1,2) disagree; (0,3) is a gold tie and (1,3) a scorer tie
    # (skipped), (2,3) disagrees. Prompt 2: a scorer tie (skipped).
    rewards = [[0.9, 0.5, 0.1, 0.5], [0.3, 0.3]]
    gold = [[0.5, 0.0, 1.0, 0.5], [0.0, 1.0]]
    assert stage.pairwise_agreement(rewards, gold) == pytest.approx(1 / 4)
    assert stage.pairwise_agreement([[0.2, 0.7]], [[0.0, 1.0]]) == 1.0
    assert stage.pairwise_agreement([[0.2, 0.2]], [[0.0, 1.0]]) is None


def test_selection_by_group_by_hand():
    result = {
        "best": [{"record": {"kind": "helpful", "task": "fact"}, "gold": 1.0},
                 {"record": {"kind": "helpful", "task": "fact"}, "gold": 0.0},
                 {"record": {"kind": "adversarial"}, "gold": 0.5}],
        "rewards": [[0.9, 0.1], [0.8, 0.2], [0.7, 0.6]],
        "gold": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.1]],
    }
    rows = stage.selection_by_group(result)
    # adversarial: samples 0.5 and 0.1 (mean 0.3), kept 0.5, the scorer orders the pair as gold does.
    # helpful/fact: all samples average 0.5, kept (1.0 + 0.0) / 2, one pair agrees and one does not.
    assert rows == [["adversarial", 1, 0.3, 0.5, 1.0], ["helpful/fact", 2, 0.5, 0.5, 0.5]]


def test_the_stage_fine_tunes_on_the_kept_samples_and_keeps_earlier_rounds(tiny, tmp_path):
    pytest.importorskip("llamaforge.stages.sft")
    cfg = stage.RejectionConfig(policy=str(tiny["lm"]), helpfulness_rm="gold", rejection_samples=3, prompts=12,
                                max_new_tokens=24, world_size="tiny", iteration=2, temperatures=[0.7, 1.1],
                                epochs=0.5, train=TrainConfig(lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=1),
                                run=RunConfig(progress=False))
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    old = {"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}]}
    (earlier / stage.SAMPLES_FILE).write_text(json.dumps(old) + "\n")
    cfg.previous = [str(earlier)]
    lengths = lambda records, replies: [min(1.0, len(r) / 50) for r in replies]  # noqa: E731
    result = stage.rejection(cfg, scorer=lengths, world=tiny["world"], out_dir=tmp_path / "rs")
    summary = json.loads((tmp_path / "rs" / "summary.json").read_text())
    assert summary["metrics"]["temperature"] == 1.1 and summary["metrics"]["k"] == 3
    assert summary["plots"][0]["series"]["max"]["x"] == [1, 2, 3]
    rewards = json.loads((tmp_path / "rs" / "rewards.json").read_text())
    assert summary["metrics"]["scorer_gold_agreement"] == stage.pairwise_agreement(rewards["rewards"], rewards["gold"])
    pool = stage.read_pool(tmp_path / "rs")
    assert pool[0] == old and len(pool) == summary["metrics"]["pool"]
    tuned = load_model(result["path"])
    assert not torch.equal(tuned.output.weight, load_model(tiny["lm"]).output.weight)


def test_a_larger_sampler_samples_and_the_policy_learns_from_its_picks(tiny, tmp_path):
    """SPEC §8: only the largest model is sampled; a smaller one fine-tunes on its best replies."""
    from llamaforge import ModelArgs, Transformer, save_model
    from llamaforge.generate import SamplingParams

    pytest.importorskip("llamaforge.stages.sft")
    torch.manual_seed(1)
    big = tmp_path / "big"
    save_model(Transformer(ModelArgs.from_preset("tiny", dim=96, n_layers=3)), big, format="meta",
               tokenizer_path=tiny["tokenizer_path"])
    (big / "tokenizer.model").write_bytes(tiny["tokenizer_path"].read_bytes())
    scored: list[str] = []

    def lengths(records, replies):
        scored.extend(replies)
        return [min(1.0, len(r) / 50) for r in replies]

    cfg = stage.RejectionConfig(policy=str(tiny["lm"]), sampler=str(big), helpfulness_rm="gold", rejection_samples=2,
                                prompts=6, max_new_tokens=16, world_size="tiny", epochs=0.5,
                                train=TrainConfig(lr=1e-3, warmup_steps=1, checkpoint_every=0, log_every=1),
                                run=RunConfig(progress=False))
    result = stage.rejection(cfg, scorer=lengths, world=tiny["world"], out_dir=tmp_path / "rs")

    records = stage.training_prompts(tiny["world"], cfg.prompts, cfg.seed + cfg.iteration)
    params = SamplingParams(temperature=cfg.temperature(), top_p=1.0, max_new_tokens=16, seed=cfg.seed + cfg.iteration)

    def samples_of(path):
        groups = stage.sample_k(load_model(path), tiny["tokenizer"], records, 2, params, batch_size=cfg.batch_size)
        return [c.text or "" for group in groups for c in group]

    assert scored == samples_of(big) != samples_of(tiny["lm"])
    assert result["summary"]["effect"].startswith(f"sampled by {big}: ")
    tuned, policy = load_model(result["path"]), load_model(tiny["lm"])
    assert tuned.args == policy.args  # the policy learned; the sampler only sampled
    assert not torch.equal(tuned.output.weight, policy.output.weight)
