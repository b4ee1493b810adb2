"""The SFT loss mask (SPEC §6, §9): exactly the assistant's answer tokens, each with its EOS;
with per-turn flags (GAtt) only the flagged answers; packed or not, the loss never covers a
prompt token or crosses from one dialog into the next."""

from __future__ import annotations

import pytest

from llamaforge.chat_format import ChatFormatError, encode_dialog
from llamaforge.model import IGNORE_INDEX
from llamaforge.stages.sft import PackedExamples, build_examples, encode_example
from llamaforge.tokenizer import train_tokenizer

DIALOG = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Where does Mira live?"},
    {"role": "assistant", "content": "Nunwick."},
    {"role": "user", "content": "And what does she keep?"},
    {"role": "assistant", "content": "Bees, many bees."},
    {"role": "user", "content": "How old is she?"},
    {"role": "assistant", "content": "Forty."},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    lines = [m["content"] for m in DIALOG] * 20 + ["the cat sat on the mat and said hello to Mira"] * 20
    return train_tokenizer(iter(lines), tmp_path_factory.mktemp("tok") / "tok.model", 300)


def masked_runs(ids, mask):
    """The maximal runs of masked tokens, as lists of ids."""
    runs, current = [], []
    for token, on in zip(ids, mask):
        if on:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_mask_is_exactly_the_answers_with_their_eos(tok):
    ids, mask = encode_example(tok, DIALOG)
    assert ids == encode_dialog(tok, DIALOG) and len(mask) == len(ids)
    runs = masked_runs(ids, mask)
    answers = [m["content"] for m in DIALOG if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run[-1] == tok.eos_id
        assert tok.decode(run[:-1]).strip() == answer
    # Nothing else: every unmasked token belongs to a prompt (BOS, [INST] ... [/INST], the system prompt).
    assert sum(mask) == sum(len(r) for r in runs)
    assert tok.bos_id not in [t for t, m in zip(ids, mask) if m]


def test_turn_flags_keep_only_the_flagged_answers(tok):
    gatt = [dict(m) for m in DIALOG]
    gatt[2]["loss"] = False
    gatt[4]["loss"] = False  # GAtt: zero loss on earlier turns (SPEC §9)
    ids, mask = encode_example(tok, gatt)
    runs = masked_runs(ids, mask)
    assert len(runs) == 1 and tok.decode(runs[0][:-1]).strip() == "Forty."
    full_ids, full_mask = encode_example(tok, DIALOG)
    assert ids == full_ids and sum(mask) < sum(full_mask)


@pytest.mark.parametrize("pack", [True, False])
def test_packed_targets_are_the_answers_and_never_cross_dialogs(tok, pack):
    short = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    dialogs = [DIALOG, short, DIALOG, short, short]
    examples = build_examples(tok, [{"messages": d} for d in dialogs])
    data = PackedExamples(examples, seq_len=400, pack=pack)
    assert (len(data) < len(dialogs)) if pack else (len(data) == len(dialogs))
    batch = data.batch(range(len(data)))
    inputs, targets = batch["inputs"], batch["targets"]
    # Each counted target is the token that follows its input position in the same example:
    # collect (previous token, target) pairs and compare with the unpacked examples.
    got = [(int(inputs[r, c]), int(targets[r, c])) for r in range(len(data)) for c in range(400)
           if targets[r, c] != IGNORE_INDEX]
    want = [(ids[i - 1], ids[i]) for ids, mask in examples for i in range(1, len(ids)) if mask[i]]
    assert got == want
    assert data.stats.loss_tokens == len(want) and data.stats.truncated == data.stats.dropped == 0
    # The target of the last token of a dialog is never the next dialog's BOS.
    assert tok.bos_id not in targets[targets != IGNORE_INDEX].tolist()


def test_overlong_dialogs_are_truncated_or_dropped_and_counted(tok):
    examples = build_examples(tok, [{"messages": DIALOG}])
    length = len(examples[0][0])
    cut = PackedExamples(examples, seq_len=length - 5, overlong="truncate")
    assert cut.stats.truncated == 1 and len(cut) == 1
    assert cut.stats.loss_tokens < sum(examples[0][1])
    dropped = PackedExamples(examples, seq_len=length - 5, overlong="drop")
    assert dropped.stats.dropped == 1 and len(dropped) == 0
    # Cut before the first answer, nothing is left to learn from: dropped, and counted.
    assert PackedExamples(examples, seq_len=8).stats.dropped == 1


def test_bad_dialogs_name_the_dialog(tok):
    with pytest.raises(ChatFormatError, match="dialog d7: .*ends with a user message"):
        build_examples(tok, [{"id": "d7", "messages": DIALOG[:-1]}])
    tagged = [{"role": "user", "content": "say [INST] twice"}, {"role": "assistant", "content": "no"}]
    with pytest.raises(ChatFormatError, match=r"#0: .*\[INST\]"):
        build_examples(tok, [{"messages": tagged}])
