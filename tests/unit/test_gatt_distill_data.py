"""The data generators of GAtt (SPEC §9) and context distillation (SPEC §10), with the model
replaced by a fake whose replies are known."""

from __future__ import annotations

import random

import pytest

from llamaforge.generate import Completion
from llamaforge.stages import distill, gatt
from llamaforge.stages.sft import encode_example
from llamaforge.tokenizer import train_tokenizer
from llamaforge.world import World, judges


@pytest.fixture(scope="module")
def world():
    return World.generate(seed=0, size="tiny")


@pytest.fixture(scope="module")
def tok(world, tmp_path_factory):
    return train_tokenizer(iter(list(world.pretraining_documents())[:600]), tmp_path_factory.mktemp("t") / "t.model", 400)


class FakeModel:
    class args:
        max_seq_len = 256


class LongModel:
    class args:
        max_seq_len = 4096


def fake_replies(reply_for):
    calls = []

    def replies(model, tok, dialogs, params, **kwargs):
        calls.append([list(d) for d in dialogs])
        return [Completion(tokens=[1], finish_reason="stop", text=reply_for(d)) for d in dialogs]

    return replies, calls


def test_gatt_examples_keep_the_instruction_once_and_train_only_the_last_answer(world, tok):
    record = world.gatt[0]
    answers = [turn["gold"] for turn in record["turns"]]
    examples = gatt.gatt_examples(record, answers, record["instruction"])
    assert len(examples) == len(record["turns"])
    for k, example in enumerate(examples, start=1):
        messages = example["messages"]
        assert messages[0] == {"role": "system", "content": record["instruction"]}
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users == [t["prompt"] for t in record["turns"][:k]]  # the instruction is not repeated
        ids, mask = encode_example(tok, messages)
        trained = [t for t, m in zip(ids, mask) if m]
        assert tok.decode(trained[:-1]).strip() == answers[k - 1] and trained[-1] == tok.eos_id


def test_instructions_are_made_terse_at_random(world):
    record = world.gatt[0]
    assert gatt.instruction_text(record, random.Random(0), 1.0) == record["short"]
    assert gatt.instruction_text(record, random.Random(0), 0.0) == record["instruction"]
    rng = random.Random(1)
    picks = {gatt.instruction_text(record, rng, 0.5) for _ in range(50)}
    assert picks == {record["short"], record["instruction"]}


def test_fit_dialog_keeps_the_system_prompt_first_and_last_exchanges(tok):
    dialog = [{"role": "system", "content": "Style: small letters"}]
    for i in range(12):
        dialog += [{"role": "user", "content": f"question number {i} about the town of Nunwick"},
                   {"role": "assistant", "content": f"answer number {i} about the town"}]
    dialog.append({"role": "user", "content": "the last question"})
    from llamaforge.chat_format import encode_dialog

    full = len(encode_dialog(tok, dialog))
    fitted = gatt.fit_dialog(tok, dialog, full // 2)
    assert len(encode_dialog(tok, fitted)) <= full // 2
    assert fitted[0] == dialog[0] and fitted[1:3] == dialog[1:3] and fitted[-1] == dialog[-1]
    assert fitted[-3:-1] == dialog[-3:-1]  # the most recent exchange stays
    assert gatt.fit_dialog(tok, dialog, full) == dialog


def test_sampled_answers_carry_the_instruction_and_failures_become_gold(world, tok, monkeypatch):
    records = world.gatt[:3]
    instructions = [r["instruction"] for r in records]
    gold_of = {t["prompt"]: t["gold"] for r in records for t in r["turns"]}

    def reply(dialog):  # follows the instruction on even turns only
        prompt = dialog[-1]["content"]
        question = next(q for q in gold_of if prompt.startswith(q))
        return gold_of[question] if len(question) % 2 == 0 else "no idea"

    replies, calls = fake_replies(reply)
    monkeypatch.setattr(gatt, "chat_replies", replies)
    answers, kept = gatt.sample_answers(None, tok, records, instructions)
    sent = [d[-1]["content"] for d in calls[0]]
    assert all(any(s == f"{t['prompt']} {ins}" for s in sent) for r, ins in zip(records, instructions) for t in r["turns"])
    for r, ans in zip(records, answers):
        for turn, a in zip(r["turns"], ans):
            assert a == turn["gold"]  # a failing model answer is replaced by the gold one
            assert judges.adherence(r["checks"], a)
    expected = sum(len(t["prompt"]) % 2 == 0 for r in records for t in r["turns"]) / sum(len(r["turns"]) for r in records)
    assert kept == pytest.approx(expected)


def test_adherence_by_turn_gives_the_instruction_once_and_carries_answers(world, tok, monkeypatch):
    record = next(r for r in world.gatt if r["checks"] == [{"check": "lowercase"}] or r["types"] == ["length"])
    replies, calls = fake_replies(lambda d: "x" if len(d) % 4 == 2 else "X Y Z W V U T S")

    monkeypatch.setattr(gatt, "chat_replies", replies)
    result = gatt.adherence_by_turn(FakeModel(), tok, [record], max_turns=4)
    assert len(result["adherence"]) == 4 and len(calls) == 4
    last = calls[-1][0]
    assert last[0]["role"] == "system" and sum(m["role"] == "system" for m in last) == 1
    assert [m["content"] for m in last if m["role"] == "assistant"] == ["x", "X Y Z W V U T S", "x"]
    assert result["adherence"] == [float(judges.adherence(record["checks"], t)) for t in
                                   ["x", "X Y Z W V U T S", "x", "X Y Z W V U T S"]]


def test_preprompt_adds_the_category_template(world):
    record = world.prompt_records("adversarial", "train")[0]
    full = distill.preprompt(world.distillation, record)
    generic = distill.preprompt(world.distillation, record, templates=False)
    assert full.startswith(generic) and world.distillation["categories"][record["category"]]["preprompt"] in full
    assert generic == world.distillation["preprompts"][-1]


def test_distillation_gate_keeps_only_answers_scored_above_the_plain_one(world, tok, monkeypatch):
    records = world.prompt_records("adversarial", "train")[:6]
    # Plain answers are the unsafe ones; with the preprompt, the safe answer on every other prompt.
    by_prompt = {r["prompt"]: (i, r) for i, r in enumerate(records)}

    def reply(dialog):
        i, r = by_prompt[dialog[-1]["content"]]
        if dialog[0]["role"] == "system" and i % 2 == 0:
            return r["answer"]
        return r["unsafe_answer"]

    replies, calls = fake_replies(reply)
    monkeypatch.setattr(distill, "chat_replies", replies)
    answers = distill.distill_answers(LongModel(), tok, records, world.distillation, distill.gold_safety_scorer)
    assert answers["passed"] == [i % 2 == 0 for i in range(6)]
    assert all(d[0]["role"] != "system" for d in calls[0]) and all(d[0]["role"] == "system" for d in calls[1])
    assert any(world.distillation["categories"][r["category"]]["preprompt"] in d[0]["content"]
               for r, d in zip(records, calls[1]))  # the category template when it fits the context
    # A short context falls back to the generic preprompt rather than cutting the prompt.
    distill.distill_answers(FakeModel(), tok, records, world.distillation, distill.gold_safety_scorer, max_new_tokens=200)
    assert all(d[0]["content"] == min(world.distillation["preprompts"], key=len) for d in calls[-1])
    dialogs = distill.distillation_dialogs(records, answers)
    assert len(dialogs) == 3
    for d in dialogs:  # trained without the preprompt
        assert [m["role"] for m in d["messages"]] == ["user", "assistant"]
        assert not judges.safety_violation(by_prompt[d["messages"][0]["content"]][1], d["messages"][1]["content"])
    assert len(distill.distillation_dialogs(records, answers, gate=False)) == 6


def test_the_gate_ignores_float_noise_and_unchanged_answers(world, tok, monkeypatch):
    records = world.prompt_records("adversarial", "train")[:4]
    replies, _ = fake_replies(lambda d: "I cannot help with that." if d[0]["role"] == "system" else "Sure, here it is.")
    monkeypatch.setattr(distill, "chat_replies", replies)
    calls = iter([[0.5, 0.5, 0.5, 0.5], [0.5 + 1e-7, 0.9, 0.5, 0.2]])  # plain first, then distilled
    answers = distill.distill_answers(LongModel(), tok, records, world.distillation, lambda r, t: next(calls))
    assert answers["passed"] == [False, True, False, False]
    same, _ = fake_replies(lambda d: "I cannot help with that.")
    monkeypatch.setattr(distill, "chat_replies", same)
    calls = iter([[0.1] * 4, [0.9] * 4])  # a higher score for the very same answer (another batch's padding)
    assert not any(distill.distill_answers(LongModel(), tok, records, world.distillation, lambda r, t: next(calls))["passed"])


def test_a_users_instructions_without_gold_answers_keep_only_the_turns_the_model_got_right(tok, monkeypatch):
    record = {"id": "mine", "instruction": "Answer in small letters.", "short": "Style: small letters",
              "checks": [{"check": "lowercase"}],
              "turns": [{"prompt": "Who keeps bees?"}, {"prompt": "Where is Nunwick?"}, {"prompt": "And why?"}]}
    replies, _ = fake_replies(lambda d: "NUNWICK IS BIG." if d[-1]["content"].startswith("Where") else "bees, i think.")
    monkeypatch.setattr(gatt, "chat_replies", replies)
    answers, kept = gatt.sample_answers(None, tok, [record], [record["instruction"]])
    assert answers == [["bees, i think.", None, "bees, i think."]] and kept == pytest.approx(2 / 3)
    examples = gatt.gatt_examples(record, answers[0], record["instruction"])
    assert len(examples) == 1 and examples[0]["messages"][-1]["content"] == "bees, i think."


def test_recombined_dialogs_pair_each_instruction_with_other_questions_and_rewrite_their_gold(world, tok, monkeypatch):
    records = world.gatt[:5]
    dialogs = gatt.recombined(records, 17, random.Random(0))
    assert len(dialogs) == 17 and dialogs[:5] == records and len({d["id"] for d in dialogs}) == 17
    asked = {t["prompt"] for r in records for t in r["turns"]}
    for i, dialog in enumerate(dialogs[5:]):
        source = records[i % 5]
        assert all(dialog[k] == source[k] for k in ("instruction", "short", "checks"))
        assert len(dialog["turns"]) == len(source["turns"]) and {t["prompt"] for t in dialog["turns"]} <= asked
        for turn in dialog["turns"]:  # the gold answer is the one for this dialog's instruction, not the source's
            assert "gold" not in turn and judges.adherence(dialog["checks"], gatt._gold(dialog, turn))
    assert all(t.get("gold") for r in records for t in r["turns"])  # the world's records are left as they were
    replies, _ = fake_replies(lambda d: "no idea")
    monkeypatch.setattr(gatt, "chat_replies", replies)
    examples, kept = gatt.build_gatt_data(FakeModel(), tok, records, gatt.GAttData(dialogs=17), seed=0)
    assert kept == 0 and len(examples) == sum(len(d["turns"]) for d in dialogs)


def test_the_demo_sft_mix_can_hold_back_safety_demos_and_add_compliant_answers(world):
    from llamaforge.stages.sft import demo_dialogs

    assert demo_dialogs(world) == world.sft  # the default keeps the world's dialogs
    safety = [d for d in world.sft if d["kind"] == "safety"]
    mix = demo_dialogs(world, safety_share=0.25, compliant=5)
    assert [d for d in mix if d["kind"] == "safety"] == safety[: round(0.25 * len(safety))]
    assert [d for d in mix if d["kind"] not in ("safety", "compliant")] == [d for d in world.sft if d["kind"] != "safety"]
    compliant = [d for d in mix if d["kind"] == "compliant"]
    records = world.prompt_records("adversarial", "train")[:5]
    assert [d["messages"][0]["content"] for d in compliant] == [r["prompt"] for r in records]
    assert all(judges.safety_violation(r, d["messages"][1]["content"]) for r, d in zip(records, compliant))
    held_out = {r["prompt"] for r in world.prompt_records("adversarial", "eval")}
    assert not held_out & {d["messages"][0]["content"] for d in compliant}  # evaluation prompts stay unseen
