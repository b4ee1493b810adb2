"""Model-based win/tie/loss with fake judges whose answers are known."""

from __future__ import annotations

import pytest
import torch

from llamaforge.eval.compare import (
    FIRST, SECOND, TIE, combine_orders, compare, compare_models, gold_scorer, model_judge, reward_model_scorer, verdict,
)

RECORDS = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(10)]


def test_pointwise_scorer_counts_wins_ties_losses_with_margin():
    # A's reply length minus B's: 4 wins, 3 ties (equal), 3 losses; 1-char gaps are ties under margin 1.5.
    a = ["xxxx", "xxxx", "xxxx", "xxxx", "xx", "xx", "xx", "x", "x", "x"]
    b = ["x", "x", "x", "xxx", "xx", "xx", "xx", "xxxx", "xxxx", "xx"]
    scorer = lambda records, replies: [len(r) for r in replies]  # noqa: E731
    result = compare(RECORDS, a, b, scorer=scorer)
    assert (result["win"], result["tie"], result["loss"]) == (0.4, 0.3, 0.3)
    assert result["win_minus_loss"] == pytest.approx(0.1)
    assert result["n"] == 10
    lo, hi = result["intervals"]["win"]
    assert 0.0 <= lo <= 0.4 <= hi <= 1.0 and lo < hi
    margin = compare(RECORDS, a, b, scorer=scorer, tie_margin=1.5)
    # Gaps: 3,3,3,1,0,0,0,-3,-3,-1 -> wins 3, ties 5, losses 2
    assert (margin["win"], margin["tie"], margin["loss"]) == (0.3, 0.5, 0.2)


def test_pairwise_judge_is_asked_in_both_orders():
    seen = []

    def longer(record, first, second):
        seen.append((record["id"], first, second))
        return "first" if len(first) > len(second) else "second" if len(second) > len(first) else "tie"

    a = ["long answer"] * 6 + ["x"] * 4
    b = ["short"] * 6 + ["much longer"] * 4
    result = compare(RECORDS, a, b, judge=longer)
    assert len(seen) == 20
    assert {(i, x, y) for i, x, y in seen} == {(r["id"], a[k], b[k]) for k, r in enumerate(RECORDS)} | \
        {(r["id"], b[k], a[k]) for k, r in enumerate(RECORDS)}
    assert (result["win"], result["tie"], result["loss"]) == (0.6, 0.0, 0.4)
    assert result["position_bias"] == 0.0 and result["first_preferred"] == 0.5


def test_a_judge_that_always_picks_the_first_position_gives_only_ties():
    result = compare(RECORDS, ["good"] * 10, ["bad"] * 10, judge=lambda record, first, second: "first")
    assert (result["win"], result["tie"], result["loss"]) == (0.0, 1.0, 0.0)
    assert result["position_bias"] == 1.0 and result["first_preferred"] == 1.0
    assert result["intervals"]["tie"] == (1.0, 1.0)


def test_combining_the_two_orders():
    assert combine_orders(FIRST, SECOND) == 1  # A won shown first and shown second
    assert combine_orders(FIRST, TIE) == 1
    assert combine_orders(TIE, FIRST) == -1
    assert combine_orders(FIRST, FIRST) == 0  # followed the position: no evidence
    assert combine_orders(SECOND, FIRST) == -1
    assert combine_orders(TIE, TIE) == 0
    assert [verdict(v) for v in ("First", "B", "tie", 0.7, -2, 0)] == [FIRST, SECOND, TIE, FIRST, SECOND, TIE]
    with pytest.raises(ValueError, match="expected 'first', 'second' or 'tie'"):
        verdict("maybe")


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one of"):
        compare(RECORDS, ["a"] * 10, ["b"] * 10)
    with pytest.raises(ValueError, match="one reply of each model per record"):
        compare(RECORDS, ["a"] * 9, ["b"] * 10, scorer=gold_scorer)


def test_gold_scorer_prefers_the_correct_answer():
    from llamaforge.world import World

    world = World.generate(seed=0, size="tiny")
    records = [r for r in world.prompt_records("helpful", "eval") if r.get("answer") and r.get("required")][:8]
    result = compare(records, [r["answer"] for r in records], ["I do not know."] * len(records), scorer=gold_scorer)
    assert result["win"] == 1.0 and result["loss"] == 0.0


class FakeRewardModel:
    """Scores a reply by how many times it says "good"; records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, tokenizer, dialogs, replies, batch_size=16):
        self.calls.append((dialogs, replies))
        return torch.tensor([float(r.count("good")) for r in replies])


def test_reward_model_scorer_scores_each_reply_to_its_dialog():
    rm = FakeRewardModel()
    result = compare(RECORDS[:3], ["good good", "good", "meh"], ["good", "good", "good"],
                     scorer=reward_model_scorer(rm, None, tokenizer=None))
    assert (result["win"], result["tie"], result["loss"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert rm.calls[0][0][0] == [{"role": "user", "content": "question 0"}]


def test_compare_models_and_model_judge_run_on_real_models(tmp_path):
    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import train_tokenizer

    text = [f"question {i} answer {i} one two three four five six seven eight nine" for i in range(200)]
    tok = train_tokenizer(iter(text), tmp_path / "tok.model", 300)
    args = ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256)
    torch.manual_seed(0)
    model_a, model_b = Transformer(args).eval(), Transformer(args).eval()
    from llamaforge.generate import SamplingParams

    judge = model_judge(model_a, tok)
    result = compare_models(model_a, model_b, tok, RECORDS[:4], judge=judge, params=SamplingParams(max_new_tokens=4))
    assert result["n"] == 4 and abs(result["win"] + result["tie"] + result["loss"] - 1) < 1e-9
    assert all("reply_a" in item and "reply_b" in item for item in result["per_item"])
    # The same model against itself by a pointwise scorer: identical replies, all ties.
    same = compare_models(model_a, model_a, tok, RECORDS[:4], scorer=lambda r, x: [len(t) for t in x],
                          params=SamplingParams(max_new_tokens=4))
    assert same["tie"] == 1.0
