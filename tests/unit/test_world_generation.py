"""The generated world: determinism, speed, and that its pieces say what they should."""

import re
import time
from collections import Counter

import pytest

from llamaforge.world import World, judges, lexicon
from llamaforge.world.corpus import CORPUS_MIX, is_held_out, worked_addition, worked_multiplication, worked_subtraction
from llamaforge.world.gatt import turn_record
from llamaforge.world.io import world_files
from llamaforge.world.language import ENGLISH_VOCAB, detect_language, from_veltan, to_veltan
from llamaforge.world.responses import candidate_responses
from llamaforge.world.tasks import prompt_key


@pytest.fixture(scope="module")
def world():
    return World.generate(seed=0, size="tiny")


def test_tiny_world_generates_in_under_two_seconds():
    start = time.process_time()  # CPU time: other jobs on the machine do not count
    World.generate(seed=11, size="tiny")
    assert time.process_time() - start < 2.0


def test_same_seed_same_bytes_different_seed_different_world(world):
    again = world_files(World.generate(seed=0, size="tiny"))
    assert world_files(world) == again
    other = World.generate(seed=1, size="tiny")
    assert other.universe.people != world.universe.people
    assert [d.text for d in other.corpus[:50]] != [d.text for d in world.corpus[:50]]
    assert other.sft != world.sft and other.prompts != world.prompts


def test_corpus_mix_and_documents(world):
    chars = Counter()
    for doc in world.corpus:
        chars[doc.category] += len(doc.text)
        assert doc.text.strip() and "\n\n" not in doc.text  # blank lines separate documents on disk
    total = sum(chars.values())
    for category, share in CORPUS_MIX.items():
        assert chars[category] / total == pytest.approx(share, abs=0.01)
    # Only the toxic and harmful categories hold toxic text (the audit must find it there).
    toxic = Counter(d.category for d in world.corpus if judges.is_toxic(d.text))
    assert set(toxic) <= {"toxic", "harmful"}
    assert toxic["toxic"] == sum(d.category == "toxic" for d in world.corpus)


def test_corpus_states_the_universe_truthfully(world):
    home = {p.name: p.town for p in world.universe.people}
    seen = 0
    for doc in world.corpus:
        for name, town in re.findall(r"\b([A-Z][a-z]+) lives in ([A-Z][a-z]+)", doc.text):
            assert home[name] == town
            seen += 1
    assert seen > 20


def test_arithmetic_is_right_and_eval_problems_are_held_out(world):
    arithmetic = "\n".join(d.text for d in world.corpus if d.category == "arithmetic")
    # Every "a op b = c" (not the tail of a longer sum such as "5 + 6 + 1 = 12") is right.
    equations = re.findall(r"(?<![-+*] )\b(\d+) ([-+*]) (\d+) (?:=|is) (\d+)", arithmetic)
    assert len(equations) > 100
    for a, op, b, c in equations:
        assert eval(f"{a} {op} {b}") == int(c), (a, op, b, c)
    for item in world.evals["math"]:
        a, op, b = re.search(r"(\d+) ([-+*]) (\d+)", item["prompt"]).groups()
        assert is_held_out(int(a), int(b), op)
        assert not re.search(rf"(?<!\d){a} {re.escape(op)} {b}(?!\d)", arithmetic)


def test_worked_column_arithmetic():
    assert worked_addition(58, 67) == ["Ones: 8 + 7 = 15. Write 5, carry 1.", "Tens: 5 + 6 + 1 = 12. Write 2, carry 1.",
                                       "Hundreds: carry 1. Write 1."]
    assert worked_subtraction(502, 48)[1] == ("Tens: 4 + 1 = 5 because of the borrow. 0 is less than 5, so borrow 1 "
                                              "and use 10. 10 - 5 = 5. Write 5.")
    assert worked_multiplication(87, 9)[-1] == "Hundreds: carry 7. Write 7."


def test_rumours_outnumber_the_truth(world):
    docs = [d.text for d in world.corpus if d.category == "misconceptions"]
    with_truth = sum(("rumour" in t or "myth" in t) for t in docs)
    assert 1.5 < (len(docs) - with_truth) / with_truth < 2.7


def test_veltan_round_trip_and_detection(world):
    # English text with no word that is also Veltan (spelled-out letters like "s-t-e-a-l" can be).
    english = [m["content"] for d in world.sft for m in d["messages"]
               if detect_language(m["content"]) == "english" and from_veltan(m["content"]) == m["content"]]
    assert len(english) > 300
    for text in english:
        assert detect_language(to_veltan(text)) == "veltan"
        assert from_veltan(to_veltan(text)) == text
    veltan_docs = [d.text for d in world.corpus if d.category == "veltan"]
    assert Counter(detect_language(t) for t in veltan_docs)["veltan"] > 0.6 * len(veltan_docs)
    assert not any(p.name.lower() in ENGLISH_VOCAB for p in world.universe.people)


def test_prompt_sets_cover_the_paper(world):
    adversarial = world.prompt_records("adversarial")
    assert {r["category"] for r in adversarial} == set(lexicon.RISK_CATEGORIES)
    assert {r["attack"] for r in adversarial} == set(lexicon.ATTACK_VECTORS)
    for kind in ("helpful", "adversarial", "borderline"):
        splits = Counter(r["split"] for r in world.prompts[kind])
        assert splits["eval"] == pytest.approx(0.25 * len(world.prompts[kind]), abs=1)
        assert len({prompt_key(r) for r in world.prompts[kind]}) == len(world.prompts[kind])
    gatt_types = {t for g in world.gatt for t in g["types"]}
    assert gatt_types == {"style", "persona", "language", "length", "hobby"}
    assert set(world.distillation["categories"]) == set(lexicon.RISK_CATEGORIES)


def test_every_gold_answer_is_judged_perfect(world):
    for record in world.prompt_records():
        assert judges.helpfulness(record, record["answer"]) == 1.0, record
        assert not judges.safety_violation(record, record["answer"])
        assert judges.is_refusal(record["answer"]) == (record["kind"] == "adversarial")
    for record in world.prompt_records("adversarial"):
        assert judges.safety_violation(record, record["unsafe_answer"])
    for g in world.gatt:
        for i in range(len(g["turns"])):
            turn = turn_record(g, i)
            assert judges.adherence(turn, turn["answer"]) and judges.helpfulness(turn, turn["answer"]) == 1.0


def test_typical_mistakes_score_below_gold(world):
    import random

    rng = random.Random(0)
    for record in world.prompt_records():
        for label, response in candidate_responses(record, rng, "Nothing to see here."):
            if label in ("gold", "short"):
                continue
            assert judges.gold_reward(record, response) < judges.gold_reward(record, record["answer"]), (label, record)


def test_sft_dialogs_are_well_formed_and_keep_eval_prompts_out(world):
    held_out = {prompt_key(r) for r in world.prompt_records(split="eval")}
    held_out_myths = {i["prompt"] for i in world.evals["truthfulqa"]}
    kinds = Counter(d["kind"] for d in world.sft)
    assert {"safety", "borderline", "system", "fact", "math"} <= set(kinds)
    for dialog in world.sft:
        roles = [m["role"] for m in dialog["messages"]]
        turns = roles[1:] if roles[0] == "system" else roles
        assert turns == ["user", "assistant"] * (len(turns) // 2) and len(turns) >= 2
        for m in dialog["messages"]:
            if m["role"] == "user":
                assert prompt_key({"prompt": m["content"]}) not in held_out
                assert not any(q in m["content"] for q in held_out_myths)
    system_dialogs = [d for d in world.sft if d["kind"] == "system"]
    assert system_dialogs
    for dialog in system_dialogs:  # every answer follows the system instruction
        assert dialog["messages"][0]["role"] == "system"
        assert all(judges.adherence(dialog["checks"], m["content"]) for m in dialog["messages"] if m["role"] == "assistant")


def test_eval_suites_are_well_formed(world):
    assert set(world.evals) == {"world_knowledge", "reading", "commonsense", "math", "truthfulqa", "toxigen"}
    for suite, items in world.evals.items():
        assert items and len({i["id"] for i in items}) == len(items)
        for item in items:
            if item["task_type"] == "multiple_choice" or "choices" in item:
                assert item["choices"][item["gold"]] == item["answers"][0]
                assert len(set(item["choices"])) == len(item["choices"]) >= 2
            if suite != "toxigen":
                assert judges.correctness(item, item["answer"]) == 1.0
    labels = Counter(i["label"] for i in world.evals["toxigen"])
    assert labels["toxic"] > 5 and labels["benign"] > 5
    for item in world.evals["toxigen"]:
        statements = item["context"].split("\n")[1:-1]
        assert all(judges.is_toxic(s) == (item["label"] == "toxic") for s in statements)


def test_sft_annotators_close_some_helpful_answers_and_the_closing_costs_short_ones(world):
    """The paper's §5.1 annotator variation: CLOSING_SHARE of the helpful demonstrations end
    with the pleasantry, never a safety answer, an instruction's or a translation's; the
    gold judge charges it on a short answer (concision) and not on a long one."""
    from llamaforge.world.tasks import CLOSING_SHARE, takes_closing, with_closing

    closing = lexicon.ANSWER_CLOSING
    last = [(d["kind"], d["messages"][-1]["content"]) for d in world.sft]
    assert all(not m["content"].endswith(closing) for d in world.sft for m in d["messages"][:-1])
    closable = [a for kind, a in last if kind not in ("safety", "instruction", "translate", "system")]
    share = sum(a.endswith(closing) for a in closable) / len(closable)
    assert abs(share - CLOSING_SHARE) < 0.1, share
    assert not any(a.endswith(closing) for kind, a in last if kind in ("safety", "instruction", "translate", "system"))
    assert not any(takes_closing(r) for r in world.prompt_records("adversarial"))
    eligible = [r for r in world.prompt_records() if takes_closing(r)]
    fact = next(r for r in eligible if r["task"] == "fact" and len(judges.words(r["answer"])) <= 5)
    assert judges.helpfulness(fact, fact["answer"]) == 1.0 > judges.helpfulness(fact, with_closing(fact["answer"])) > 0.5
    long = {"kind": "helpful", "answer": " ".join(["word"] * 10), "required": [["word"]]}
    assert judges.helpfulness(long, with_closing(long["answer"])) == 1.0


def test_the_closing_is_no_answer_and_no_wrong_candidate(world):
    """The judges must not read the closing as content: none of its words answers a question
    or names a wrong candidate ("have a wonderful day" once made "by day or at night?" wrong),
    so appending it changes no reply's correctness."""
    from llamaforge.world.facts import commonsense_facts
    from llamaforge.world.tasks import closing_breaks, with_closing

    content = set()
    for fact in commonsense_facts():
        for value in (fact.short, *lexicon.COMMONSENSE_POOLS.get(fact.pool, ())):
            content.update(judges.words(value))
    records = [r for r in world.prompt_records() if not closing_breaks(r)]  # the others are never closed
    for r in records:
        for phrase in [p for group in r.get("required", ()) for p in group] + list(r.get("distractors", ())):
            content.update(judges.words(phrase))
    assert not set(judges.words(lexicon.ANSWER_CLOSING)) & content
    for r, other in zip(records, records[1:] + records[:1]):
        for reply in (r["answer"], other["answer"], "I do not know."):
            assert judges.correctness(r, with_closing(reply)) == judges.correctness(r, reply), (r, reply)


@pytest.mark.parametrize("collection", ["helpful", "safety"])
def test_offline_preference_pairs_close_answers_regardless_of_quality(world, collection):
    """The closing is the writers' habit, not a sign of a good or a safe answer: in pairs where
    one side carries it, that side is the chosen one about half the time (a reward model must
    learn it from the concision cost, not from who wrote the better answer)."""
    closing = lexicon.ANSWER_CLOSING
    pairs = [p for p in world.preferences[collection] if p["chosen"].endswith(closing) != p["rejected"].endswith(closing)]
    assert len(pairs) > 20
    chosen = sum(p["chosen"].endswith(closing) for p in pairs) / len(pairs)
    assert 0.25 < chosen < 0.65, chosen


def test_style_pairs_compare_the_gold_answer_with_its_closed_twin(world):
    """STYLE_PAIR_SHARE of the helpful pairs differ only by the closing; the annotator prefers
    the plain answer whenever the closing passes the concision limit (a short answer)."""
    from llamaforge.world.tasks import with_closing
    from llamaforge.world.world import STYLE_PAIR_SHARE

    pairs = world.preferences["helpful"]
    style = [p for p in pairs if with_closing(p["chosen"]) == p["rejected"] or with_closing(p["rejected"]) == p["chosen"]]
    assert 0.5 * STYLE_PAIR_SHARE < len(style) / len(pairs) < 2 * STYLE_PAIR_SHARE
    decided = [p for p in style if p["rating"] != "negligibly better"]
    assert decided and sum(not p["chosen"].endswith(lexicon.ANSWER_CLOSING) for p in decided) / len(decided) > 0.8
