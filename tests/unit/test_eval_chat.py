import random

import pytest

from llamaforge.eval import chat as chat_eval_module
from llamaforge.eval.chat import chat_eval, paired_difference, record_dialog
from llamaforge.generate import Completion
from llamaforge.world import World, judges
from llamaforge.world.responses import candidate_responses


@pytest.fixture(scope="module")
def records():
    world = World.generate(seed=0, size="tiny")
    picked = []
    for kind in ("helpful", "adversarial", "borderline"):
        picked += world.prompt_records(kind=kind, split="eval")[:6]
    return picked


def fake_replies(answer_of):
    def replies(model, tok, dialogs, params, **kwargs):
        return [Completion(tokens=[1], finish_reason="stop", text=answer_of(d)) for d in dialogs]
    return replies


def test_gold_answers_score_well_and_unsafe_answers_violate(records, monkeypatch):
    by_prompt = {r["prompt"]: r for r in records}
    monkeypatch.setattr(chat_eval_module, "chat_replies", fake_replies(lambda d: by_prompt[d[-1]["content"]]["answer"]))
    good = chat_eval(None, None, records)
    assert good["metrics"]["violation"] == 0.0 and good["metrics"]["false_refusal"] == 0.0
    assert good["metrics"]["helpfulness"] > 0.8 and good["metrics"]["parsed"] == 1.0

    def bad(dialog):
        record = by_prompt[dialog[-1]["content"]]
        return record.get("unsafe_answer") or "I am sorry, but I cannot help with that."
    monkeypatch.setattr(chat_eval_module, "chat_replies", fake_replies(bad))
    worse = chat_eval(None, None, records)
    assert worse["metrics"]["violation"] == 1.0 and worse["metrics"]["false_refusal"] == 1.0
    assert any(name.startswith("violation/") for name in worse["metrics"])
    gain = paired_difference(worse, good, "helpfulness")
    assert gain["diff"] > 0.5 and gain["lo"] > 0 and gain["n"] == 12
    # Words per answer, over the non-adversarial replies only (the same 12).
    answers = [r for r in records if r["kind"] != "adversarial"]
    assert good["n"]["words"] == 12
    assert good["metrics"]["words"] == pytest.approx(sum(len(r["answer"].split()) for r in answers) / 12)
    # Fully right: every non-adversarial record with a gold answer, 1 for the gold, 0 for a refusal.
    with_gold = [r for r in answers if judges.correctness(r, "") is not None]
    assert with_gold and good["n"]["correct"] == len(with_gold) and good["metrics"]["correct"] == 1.0
    assert worse["metrics"]["correct"] == 0.0


def test_correct_separates_the_facts_from_the_form(records, monkeypatch):
    # The gold answer rambling on past the concision limit: less helpful, still fully right.
    by_prompt = {r["prompt"]: r for r in records if r["kind"] == "helpful" and not r.get("checks")}
    monkeypatch.setattr(chat_eval_module, "chat_replies", fake_replies(lambda d: " ".join([by_prompt[d[-1]["content"]]["answer"]] * 6)))
    long = chat_eval(None, None, list(by_prompt.values()))
    assert long["metrics"]["correct"] == 1.0 and long["metrics"]["helpfulness"] < 0.6
    # A wrong fact in the gold answer's form: not right.
    wrong = {p: dict(candidate_responses(r, random.Random(0))).get("wrong") for p, r in by_prompt.items()}
    wrong = {p: w for p, w in wrong.items() if w}
    monkeypatch.setattr(chat_eval_module, "chat_replies", fake_replies(lambda d: wrong[d[-1]["content"]]))
    assert wrong and chat_eval(None, None, [by_prompt[p] for p in wrong])["metrics"]["correct"] == 0.0


def test_record_dialog_adds_a_system_prompt():
    assert record_dialog({"prompt": "hi"}, "be kind") == [
        {"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="no items"):
        paired_difference({"per_item": []}, {"per_item": []}, "helpfulness")
