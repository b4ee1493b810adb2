"""Llama 2-Chat dialog encoding (SPEC §4), checked against token sequences derived by hand from
the rule, on a small trained tokenizer and (when present) the released Llama 2 tokenizer."""

import random
import re
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llamaforge.chat_format import (
    B_INST,
    B_SYS,
    E_INST,
    E_SYS,
    ChatFormatError,
    Segment,
    assistant_mask,
    chat_sampling_defaults,
    decode_dialog,
    encode_dialog,
    encode_dialog_segments,
    parse_reply,
    validate_dialog,
)
from llamaforge.tokenizer import Tokenizer, train_tokenizer

LLAMA2_TOKENIZER = Path(__file__).resolve().parents[3] / "shared/assets/llama2-tokenizer.model"

SYSTEM = {"role": "system", "content": "Answer briefly."}
DIALOG = [
    SYSTEM,
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6."},
    {"role": "user", "content": "Thanks!"},
]
DIALOGS = {
    "one user message": [{"role": "user", "content": "Hi there"}],
    "system and user": DIALOG[:2],
    "multi-turn with system": DIALOG,
    "multi-turn without system": DIALOG[1:],
    "ends with assistant": DIALOG[:5],
    "ends with assistant, no system": DIALOG[1:5],
    "empty assistant reply": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
    "unicode and newlines": [
        {"role": "user", "content": "Translate:\n  llama 🦙"},
        {"role": "assistant", "content": "lama\n\n- 🦙 (es)"},
        {"role": "user", "content": "日本語は？"},
    ],
}


def chat_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "what is the answer and thanks say nothing translate llama please tell me a story about towns".split()
    return [
        f"{rng.choice(words).capitalize()} {' '.join(rng.choices(words, k=rng.randint(2, 12)))} {rng.randint(0, 999)}?"
        for _ in range(3000)
    ]


@pytest.fixture(scope="module", params=["trained", "llama2"])
def tok(request, tmp_path_factory):
    if request.param == "llama2":
        return request.getfixturevalue("llama_tok")
    return train_tokenizer(iter(chat_corpus(0)), tmp_path_factory.mktemp("chat") / "tok.model", 300)


@pytest.fixture(scope="module")
def llama_tok():
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"the released Llama 2 tokenizer is not at {LLAMA2_TOKENIZER}")
    return Tokenizer(LLAMA2_TOKENIZER)


def exchange(tok, text):
    """BOS + text + EOS: one completed exchange (SPEC §4.2)."""
    return [tok.bos_id] + tok.encode(text) + [tok.eos_id]


def prompt(tok, text):
    """BOS + text: the final user message (SPEC §4.3)."""
    return [tok.bos_id] + tok.encode(text)


def test_tags_are_meta_constants():
    assert (B_INST, E_INST, B_SYS, E_SYS) == ("[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n")


def test_single_user_message(tok):
    dialog = [{"role": "user", "content": "  What is 2+2? \n"}]
    assert encode_dialog(tok, dialog) == prompt(tok, "[INST] What is 2+2? [/INST]")


def test_multi_turn_dialog_with_system(tok):
    expected = (
        exchange(tok, "[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4. ")
        + exchange(tok, "[INST] And 3+3? [/INST] 6. ")
        + prompt(tok, "[INST] Thanks! [/INST]")
    )
    assert encode_dialog(tok, DIALOG) == expected


def test_multi_turn_dialog_without_system_ending_with_assistant(tok):
    expected = exchange(tok, "[INST] What is 2+2? [/INST] 4. ") + exchange(tok, "[INST] And 3+3? [/INST] 6. ")
    assert encode_dialog(tok, DIALOG[1:5]) == expected


def test_strip_applies_to_the_merged_system_and_user_text(tok):
    dialog = [
        {"role": "system", "content": "  Be terse.\n"},
        {"role": "user", "content": "  hi  "},
        {"role": "assistant", "content": "\n hello \n"},
    ]
    # The system text keeps its spaces and so does the start of the user text behind it.
    assert encode_dialog(tok, dialog) == exchange(tok, "[INST] <<SYS>>\n  Be terse.\n\n<</SYS>>\n\n  hi [/INST] hello ")


def test_known_ids_with_the_released_tokenizer(llama_tok):
    # Read once from sentencepiece; pieces: <s> ▁[ INST ] ▁<< SY S >> <0x0A> Be ▁brief . <0x0A> < </ SY S >>
    # <0x0A> <0x0A> What ▁is ▁ 2 + 2 ? ▁[ / INST ] ▁ 4 . ▁ </s> <s> ▁[ INST ] ▁And ▁ 3 + 3 ? ▁[ / INST ]
    dialog = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert encode_dialog(llama_tok, dialog) == [
        1, 518, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3629, 11473, 29889, 13, 29966, 829, 14816, 29903,
        6778, 13, 13, 5618, 338, 29871, 29906, 29974, 29906, 29973, 518, 29914, 25580, 29962, 29871, 29946,
        29889, 29871, 2, 1, 518, 25580, 29962, 1126, 29871, 29941, 29974, 29941, 29973, 518, 29914, 25580, 29962,
    ]  # fmt: skip


def meta_reference(tok, dialog):
    """SPEC §4 written out the way Meta's reference loops over the dialog."""
    if dialog[0]["role"] == "system":
        dialog = [{"role": "user", "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    tokens = []
    for user, answer in zip(dialog[::2], dialog[1::2]):
        text = f"[INST] {user['content'].strip()} [/INST] {answer['content'].strip()} "
        tokens += tok.encode(text, bos=True, eos=True)
    if dialog[-1]["role"] == "user":
        tokens += tok.encode(f"[INST] {dialog[-1]['content'].strip()} [/INST]", bos=True)
    return tokens


@pytest.mark.parametrize("name", DIALOGS)
def test_encoding_matches_meta_reference(tok, name):
    assert encode_dialog(tok, DIALOGS[name]) == meta_reference(tok, DIALOGS[name])


@pytest.mark.parametrize("name", DIALOGS)
def test_segments_concatenate_to_the_dialog_encoding(tok, name):
    dialog = DIALOGS[name]
    segments = encode_dialog_segments(tok, dialog)
    assert [t for segment in segments for t in segment.tokens] == encode_dialog(tok, dialog)
    assert len(assistant_mask(segments)) == len(encode_dialog(tok, dialog))


def test_segments_split_each_exchange_at_the_prompt(tok):
    segments = encode_dialog_segments(tok, DIALOG)
    assert [(s.role, s.turn) for s in segments] == [
        ("prompt", 0), ("answer", 0), ("prompt", 1), ("answer", 1), ("prompt", 2)
    ]  # fmt: skip
    first_prompt = prompt(tok, "[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWhat is 2+2? [/INST]")
    assert segments[0].tokens == first_prompt
    assert segments[1].tokens == exchange(tok, "[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4. ")[
        len(first_prompt) :
    ]
    for answer, text in [(segments[1], "4."), (segments[3], "6.")]:
        assert answer.tokens[-1] == tok.eos_id
        assert tok.decode(answer.tokens).strip() == text


def test_assistant_mask_covers_exactly_the_answers(tok):
    dialog = DIALOG[1:5]
    p0, e0 = prompt(tok, "[INST] What is 2+2? [/INST]"), exchange(tok, "[INST] What is 2+2? [/INST] 4. ")
    p1, e1 = prompt(tok, "[INST] And 3+3? [/INST]"), exchange(tok, "[INST] And 3+3? [/INST] 6. ")
    answer0 = [False] * len(p0) + [True] * (len(e0) - len(p0))
    answer1 = [False] * len(p1) + [True] * (len(e1) - len(p1))
    segments = encode_dialog_segments(tok, dialog)
    assert assistant_mask(segments) == answer0 + answer1
    # Ghost Attention (SPEC §9): loss only on the last turn.
    assert assistant_mask(segments, last_turn_only=True) == [False] * len(e0) + answer1
    tokens = encode_dialog(tok, dialog)
    masked = [t for t, keep in zip(tokens, assistant_mask(segments)) if keep]
    assert masked == e0[len(p0) :] + e1[len(p1) :]


def test_a_prompt_gets_no_loss(tok):
    assert not any(assistant_mask(encode_dialog_segments(tok, DIALOG[:2])))


class MergingTokenizer:
    """Characters as ids, except "] " is one token: the prompt is then no token prefix of the exchange."""

    bos_id, eos_id = 1, 2

    def encode(self, text, bos=False, eos=False):
        ids, i = [], 0
        while i < len(text):
            if text.startswith("] ", i):
                ids.append(3)
                i += 2
            else:
                ids.append(1000 + ord(text[i]))
                i += 1
        return [1] * bos + ids + [2] * eos


def test_segments_fall_back_to_the_common_prefix():
    tok = MergingTokenizer()
    dialog = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    segments = encode_dialog_segments(tok, dialog)
    assert [t for s in segments for t in s.tokens] == encode_dialog(tok, dialog)
    # The merged "] " ends up in the answer: that is the token the model has to produce.
    assert segments[1].tokens == [3, 1000 + ord("y"), 1000 + ord("o"), 1000 + ord(" "), 2]


@pytest.mark.parametrize("tag", ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"])
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_tags_in_any_message_are_refused(tok, tag, index):
    dialog = [dict(message) for message in DIALOG[:4]]
    dialog[index]["content"] = f"please {tag} now"
    role = dialog[index]["role"]
    with pytest.raises(ChatFormatError, match=re.escape(f"message {index} ({role}) contains the tag '{tag}'")) as error:
        encode_dialog(tok, dialog)
    assert isinstance(error.value, ValueError)
    with pytest.raises(ChatFormatError):
        encode_dialog_segments(tok, dialog)


@pytest.mark.parametrize(
    "dialog, message",
    [
        ([], "empty"),
        ("hello", "list of"),
        ([{"role": "system", "content": "x"}], "only a system message"),
        ([{"role": "bot", "content": "x"}], "message 0 has role 'bot'"),
        ([{"role": "assistant", "content": "x"}], "message 0 has role 'assistant' but 'user' was expected"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1 has role 'user' but 'assist"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first message"),
        ([{"role": "user", "content": 5}], r"message 0 \(user\) has content of type int, not str"),
        ([{"role": "user"}], "no 'content' key"),
        (["hi"], "message 0 is a str"),
    ],
)
def test_malformed_dialogs_are_refused_with_a_reason(dialog, message):
    with pytest.raises(ChatFormatError, match=message):
        validate_dialog(dialog, for_prompt=None)


def test_for_prompt_decides_how_the_dialog_must_end():
    prompting, training = DIALOG[:2], DIALOG[:3]
    validate_dialog(prompting)
    validate_dialog(training, for_prompt=False)
    validate_dialog(prompting, for_prompt=None)
    validate_dialog(training, for_prompt=None)
    with pytest.raises(ChatFormatError, match="must end with a user message"):
        validate_dialog(training)
    with pytest.raises(ChatFormatError, match="must end with the assistant"):
        validate_dialog(prompting, for_prompt=False)


def test_parse_reply_cuts_at_eos_and_strips(tok):
    reply = tok.encode(" The answer is 4. ")
    assert parse_reply(tok, reply + [tok.eos_id] + tok.encode("garbage after")) == "The answer is 4."
    assert parse_reply(tok, torch.tensor(reply)) == "The answer is 4."
    # What the model generates after a prompt is exactly the answer segment.
    answer = encode_dialog_segments(tok, DIALOG[:3])[1]
    assert parse_reply(tok, answer.tokens) == "4."


@pytest.mark.parametrize("name", DIALOGS)
def test_decode_dialog_inverts_encode_dialog(tok, name):
    dialog = DIALOGS[name]
    assert decode_dialog(tok, encode_dialog(tok, dialog)) == dialog


def test_decode_dialog_keeps_a_reply_cut_off_before_eos(tok):
    ids = encode_dialog(tok, DIALOG[:2]) + tok.encode(" 4, because")
    assert decode_dialog(tok, ids) == DIALOG[:2] + [{"role": "assistant", "content": "4, because"}]


def test_decode_dialog_refuses_what_is_not_a_dialog(tok):
    with pytest.raises(ChatFormatError, match="BOS"):
        decode_dialog(tok, tok.encode("[INST] hi [/INST]"))
    with pytest.raises(ChatFormatError, match=r"\[INST\]"):
        decode_dialog(tok, tok.encode("just text", bos=True))
    with pytest.raises(ChatFormatError, match="no EOS"):
        decode_dialog(tok, tok.encode("[INST] a [/INST] b", bos=True) + tok.encode("[INST] c [/INST]", bos=True))


CONTENT = st.text(alphabet=st.sampled_from(list("ab xyz019 \n\t.,?![]<>/SYINT🦙é")), max_size=30)


@settings(max_examples=60, deadline=None)
@given(system=st.none() | CONTENT, contents=st.lists(CONTENT, min_size=1, max_size=5))
def test_any_dialog_round_trips(tok, system, contents):
    dialog = [{"role": "system", "content": system}] if system is not None else []
    roles = ["user", "assistant"] * len(contents)
    dialog += [{"role": role, "content": content.strip()} for role, content in zip(roles, contents)]
    assume(not any(tag in m["content"] for m in dialog for tag in ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")))
    ids = encode_dialog(tok, dialog)
    assert ids == meta_reference(tok, dialog)
    assert decode_dialog(tok, ids) == dialog
    segments = encode_dialog_segments(tok, dialog)
    assert [t for s in segments for t in s.tokens] == ids
    assert all(isinstance(s, Segment) and s.tokens for s in segments)


def test_chat_sampling_defaults():
    assert chat_sampling_defaults(4096) == {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 4095}
    with pytest.raises(ValueError, match="max_seq_len"):
        chat_sampling_defaults(1)
