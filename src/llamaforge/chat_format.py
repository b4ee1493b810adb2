"""The Llama 2-Chat dialog format (SPEC §4): dialogs to tokens and back, exactly Meta's algorithm.

A dialog is a list of `{"role", "content"}` messages: an optional first `system`, then strictly
alternating `user` / `assistant`. Each (user, assistant) exchange is encoded on its own as

    <s>[INST] {user} [/INST] {assistant} </s>

with the system message folded into the first user message, and a final user message as
`<s>[INST] {user} [/INST]`, which the model completes. `encode_dialog_segments` keeps track of
which tokens are prompt and which are answer, so SFT can mask the loss by message boundaries.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from llamaforge.tokenizer import Tokenizer, as_id_list

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
# The four tags no message may contain (SPEC §4.5): they would forge turn boundaries.
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
ROLES = ("system", "user", "assistant")


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


Dialog = list[Message]


class ChatFormatError(ValueError):
    """A dialog that the Llama 2-Chat format cannot encode (or token ids it cannot decode)."""


@dataclass(frozen=True)
class Segment:
    """A run of tokens of one exchange: the prompt (BOS, [INST] user [/INST]) or the answer
    (the assistant's reply and EOS). `turn` counts exchanges from 0."""

    tokens: list[int]
    role: Literal["prompt", "answer"]
    turn: int


def validate_dialog(dialog: Sequence[Mapping], *, for_prompt: bool | None = True) -> None:
    """Raise `ChatFormatError` unless `dialog` follows the Llama 2-Chat rules (SPEC §4).

    Roles: an optional first `system`, then `user`, `assistant`, `user`, ... alternating.
    `for_prompt=True`: the dialog must end with a user message (the model answers it);
    `False`: it must end with an assistant message (a complete training dialog);
    `None`: either. No message may contain `[INST]`, `[/INST]`, `<<SYS>>` or `<</SYS>>`:
    Meta's reference generates anyway and then replaces the reply; we refuse up front.
    """
    if isinstance(dialog, (str, Mapping)) or not isinstance(dialog, Sequence):
        raise ChatFormatError(f"a dialog is a list of {{'role', 'content'}} messages, got {type(dialog).__name__}")
    if not dialog:
        raise ChatFormatError("the dialog is empty: it needs at least one user message")
    for i, message in enumerate(dialog):
        _check_message(i, message)

    start = 1 if dialog[0]["role"] == "system" else 0
    if start == len(dialog):
        raise ChatFormatError("the dialog has only a system message: add a user message after it")
    for i in range(start, len(dialog)):
        role = dialog[i]["role"]
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role == "system":
            raise ChatFormatError(f"message {i} has role 'system': only the first message may be a system message")
        if role != expected:
            raise ChatFormatError(
                f"message {i} has role {role!r} but {expected!r} was expected: after an optional system message, "
                "roles must alternate user, assistant, user, ..."
            )
    last = dialog[-1]["role"]
    if for_prompt is True and last != "user":
        raise ChatFormatError(
            f"the dialog ends with an assistant message (message {len(dialog) - 1}); "
            "to prompt the model for a reply it must end with a user message"
        )
    if for_prompt is False and last != "assistant":
        raise ChatFormatError(
            f"the dialog ends with a user message (message {len(dialog) - 1}); "
            "a training dialog must end with the assistant's reply"
        )


def _check_message(i: int, message: object) -> None:
    shape = "each message must be a dict with 'role' and 'content'"
    if not isinstance(message, Mapping):
        raise ChatFormatError(f"message {i} is a {type(message).__name__}; {shape}")
    for key in ("role", "content"):
        if key not in message:
            raise ChatFormatError(f"message {i} has no {key!r} key; {shape}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise ChatFormatError(f"message {i} has role {role!r}; roles must be 'system', 'user' or 'assistant'")
    if not isinstance(content, str):
        raise ChatFormatError(f"message {i} ({role}) has content of type {type(content).__name__}, not str")
    for tag in SPECIAL_TAGS:
        if tag in content:
            raise ChatFormatError(
                f"message {i} ({role}) contains the tag {tag!r}, which the Llama 2-Chat format reserves to mark "
                "turns (SPEC §4); remove it or write it differently (e.g. '[ INST ]')"
            )


def _exchanges(dialog: Sequence[Mapping]) -> list[tuple[str, str | None]]:
    """(user, assistant) text pairs after folding in the system message and stripping (SPEC §4.1-3);
    the assistant is None for a final user message."""
    contents = [message["content"] for message in dialog]
    if dialog[0]["role"] == "system":
        # Folded unstripped: strip() below applies to the merged string, never to the system text alone.
        contents = [B_SYS + contents[0] + E_SYS + contents[1]] + contents[2:]
    users, answers = contents[0::2], contents[1::2]
    return [
        (user.strip(), answers[turn].strip() if turn < len(answers) else None) for turn, user in enumerate(users)
    ]


def _prompt_text(user: str) -> str:
    return f"{B_INST} {user} {E_INST}"


def _exchange_text(user: str, answer: str) -> str:
    return f"{B_INST} {user} {E_INST} {answer} "


def encode_dialog(tok: Tokenizer, dialog: Sequence[Mapping]) -> list[int]:
    """The token ids of a dialog, exactly as Meta's Llama 2-Chat reference encodes it (SPEC §4).

    Each complete exchange is `BOS + encode("[INST] {user} [/INST] {assistant} ") + EOS`, a final
    user message `BOS + encode("[INST] {user} [/INST]")`; each is encoded separately (so each
    gets SentencePiece's dummy prefix) and the lists are concatenated. The dialog may end with
    a user message (a prompt) or an assistant message (a training example).
    """
    validate_dialog(dialog, for_prompt=None)
    tokens: list[int] = []
    for user, answer in _exchanges(dialog):
        if answer is None:
            tokens += tok.encode(_prompt_text(user), bos=True, eos=False)
        else:
            tokens += tok.encode(_exchange_text(user, answer), bos=True, eos=True)
    return tokens


def encode_dialog_segments(tok: Tokenizer, dialog: Sequence[Mapping]) -> list[Segment]:
    """`encode_dialog`, split into prompt and answer segments; their tokens concatenate to it exactly.

    An exchange is one SentencePiece encoding, so the prompt/answer split is found on token
    boundaries, not by searching strings: the prompt `[INST] {user} [/INST]` encoded alone is a
    token prefix of the exchange (SentencePiece splits before the space that starts the answer).
    Should a tokenizer merge across that boundary, the split falls back to the longest common
    prefix, and the merged token counts as answer: it is what the model has to produce.
    """
    validate_dialog(dialog, for_prompt=None)
    segments: list[Segment] = []
    for turn, (user, answer) in enumerate(_exchanges(dialog)):
        prompt = tok.encode(_prompt_text(user), bos=True, eos=False)
        if answer is None:
            segments.append(Segment(prompt, "prompt", turn))
            continue
        exchange = tok.encode(_exchange_text(user, answer), bos=True, eos=True)
        split = _common_prefix_length(prompt, exchange)
        segments.append(Segment(exchange[:split], "prompt", turn))
        segments.append(Segment(exchange[split:], "answer", turn))
    return segments


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def assistant_mask(
    segments: Iterable[Segment], *, last_turn_only: bool = False, turns: Collection[int] | None = None
) -> list[bool]:
    """Per token of the concatenated segments: True where the SFT loss applies (SPEC §6).

    That is the assistant's answers, each with its EOS; prompts get no loss. With
    `last_turn_only`, only the final answer gets loss, as Ghost Attention trains (SPEC §9);
    `turns` (answer indices, 0 = the first answer) limits the loss to those answers.
    """
    segments = list(segments)
    answer_turns = [segment.turn for segment in segments if segment.role == "answer"]
    last_answer_turn = answer_turns[-1] if answer_turns else None
    mask: list[bool] = []
    for segment in segments:
        gets_loss = segment.role == "answer" and (not last_turn_only or segment.turn == last_answer_turn)
        gets_loss = gets_loss and (turns is None or segment.turn in turns)
        mask += [gets_loss] * len(segment.tokens)
    return mask


def parse_reply(tok: Tokenizer, generated_ids: Iterable[int]) -> str:
    """The assistant's reply from the ids generated after a prompt: cut at the first EOS,
    decoded, stripped (the format puts a space before and after every answer)."""
    ids = as_id_list(generated_ids)
    if tok.eos_id in ids:
        ids = ids[: ids.index(tok.eos_id)]
    return tok.decode(ids).strip()


def decode_dialog(tok: Tokenizer, ids: Iterable[int]) -> Dialog:
    """The dialog back from its token ids: the inverse of `encode_dialog`.

    `decode_dialog(tok, encode_dialog(tok, d)) == d` for any valid dialog whose user and
    assistant texts have no leading or trailing whitespace (encoding strips it; the system
    text is kept exactly). A last exchange without EOS, e.g. a prompt followed by a reply cut
    off at the length limit, decodes with that partial reply as the last assistant message.
    """
    ids = as_id_list(ids)
    if not ids or ids[0] != tok.bos_id:
        raise ChatFormatError("the ids do not start with BOS, so they are not an encoded dialog")
    starts = [i for i, token in enumerate(ids) if token == tok.bos_id] + [len(ids)]
    dialog: Dialog = []
    for turn, (start, end) in enumerate(zip(starts, starts[1:])):
        chunk = ids[start + 1 : end]
        is_last = end == len(ids)
        complete = tok.eos_id in chunk
        if complete and chunk.index(tok.eos_id) != len(chunk) - 1:
            raise ChatFormatError(f"exchange {turn} has tokens after its EOS; each exchange ends at its EOS")
        if not complete and not is_last:
            raise ChatFormatError(f"exchange {turn} has no EOS but is followed by another exchange")
        text = tok.decode(chunk[:-1] if complete else chunk)
        user, answer = _split_exchange(text, turn)
        if turn == 0 and user.startswith(B_SYS):
            system, user = _split_system(user)
            dialog.append({"role": "system", "content": system})
        dialog.append({"role": "user", "content": user})
        if complete or answer:
            dialog.append({"role": "assistant", "content": answer})
    return dialog


def _split_exchange(text: str, turn: int) -> tuple[str, str]:
    """'[INST] {user} [/INST] {answer} ' -> (user, answer); the answer is '' for a bare prompt."""
    end = text.find(E_INST)
    if not text.startswith(B_INST + " ") or end < len(B_INST) + 1:
        raise ChatFormatError(f"exchange {turn} is not of the form '[INST] ... [/INST]': {text[:80]!r}")
    # Messages never contain the tags (validate_dialog), so the first [/INST] closes the prompt.
    return text[len(B_INST) + 1 : end - 1], text[end + len(E_INST) :].strip()


def _split_system(user: str) -> tuple[str, str]:
    """'<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}' -> (system, user). The merged string was
    stripped as a whole, so with an empty user the trailing '\\n\\n' is gone too."""
    close = E_SYS.rstrip("\n")
    end = user.find(close)
    if end < 0:
        raise ChatFormatError("the first exchange opens a system message with '<<SYS>>' but never closes it")
    rest = user[end + len(close) :]
    return user[len(B_SYS) : end], rest.removeprefix("\n\n")


def chat_sampling_defaults(max_seq_len: int) -> dict:
    """Sampling settings of Meta's reference chat (SPEC §4): temperature 0.6, top-p 0.9, and up
    to `max_seq_len - 1` new tokens (the total stays capped at `max_seq_len`)."""
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len={max_seq_len} leaves no room for a reply; it must be at least 2")
    return {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": max_seq_len - 1}
