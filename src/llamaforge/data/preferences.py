"""Preference pairs for the reward models (SPEC §7): reading users' files, sampling fresh pairs
from the current model(s) for the built-in world's annotator, and one normal form for both.

A pair in normal form: ``{"dialog": [...messages ending with the user...], "chosen": str,
"rejected": str, "rating": str | None, "safety_label": str | None, "kind": str, "id": str}``.

Two file layouts (JSONL, one pair per line):
- ``prompt`` (or ``messages`` ending with the user), ``chosen``, ``rejected``, optional
  ``rating`` (SPEC §7's four) and ``safety_label`` (both_safe, chosen_safe, both_unsafe);
- full transcripts: ``chosen`` and ``rejected`` each the whole conversation, as a list of
  messages or as "\\n\\nHuman: ... \\n\\nAssistant: ..." text (the Anthropic HH layout); the
  turns they share are the prompt, their last assistant turns the two replies.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Sequence

from ..world.annotator import Annotator, collect_preferences
from ..world.io import DataFileError, check_messages, preference_labels, read_jsonl, read_preferences

_TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def normalize_pair(row: dict) -> dict:
    """A preference row (``prompt`` or ``messages`` layout, e.g. `world.preferences`) in normal form."""
    dialog = [dict(m) for m in row["messages"]] if "messages" in row else [{"role": "user", "content": row["prompt"]}]
    return {"dialog": dialog, "chosen": row["chosen"], "rejected": row["rejected"], "rating": row.get("rating"),
            "safety_label": row.get("safety_label"), "kind": row.get("kind", "helpful"), "id": row.get("id", "")}


def read_preference_file(path: str | Path) -> list[dict]:
    """Pairs in normal form from a JSONL file in either layout (decided by its first line); a
    malformed line raises DataFileError naming file:line and what is wrong."""
    records = read_jsonl(path)
    if not _is_transcript(records[0]):
        return [dict(normalize_pair(r), id=r.get("id") or f"{Path(path).stem}-{i:05d}")
                for i, r in enumerate(read_preferences(path))]
    out = []
    for number, record in enumerate(records, start=1):
        if not _is_transcript(record):
            raise DataFileError(path, number, "this line has 'prompt'/'messages' but the file's first line is a "
                                              "full-transcript pair; use one layout per file")
        out.append(dict(transcript_pair(record, path, number), id=record.get("id") or f"{Path(path).stem}-{number - 1:05d}"))
    return out


def _is_transcript(record: dict) -> bool:
    return "prompt" not in record and "messages" not in record


def transcript_pair(record: dict, path="<record>", number: int | None = None) -> dict:
    """A "chosen/rejected full transcript" row in normal form: the shared turns become the
    dialog, each transcript's final assistant turn its reply."""
    chosen, rejected = (_transcript_messages(record, key, path, number) for key in ("chosen", "rejected"))
    if chosen[:-1] != rejected[:-1]:
        shared = next(i for i, (a, b) in enumerate(zip(chosen + [None], rejected + [None])) if a != b)
        raise DataFileError(path, number, f"the 'chosen' and 'rejected' transcripts differ before their last turn "
                                          f"(first at turn {shared}); a pair answers one shared conversation")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise DataFileError(path, number, "'chosen' and 'rejected' end with the same reply; a pair needs two")
    rating, label = preference_labels(record, path, number)
    return {"dialog": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"],
            "rating": rating, "safety_label": label, "kind": record.get("kind", "helpful"), "id": record.get("id", "")}


def _transcript_messages(record: dict, key: str, path, number: int | None) -> list[dict]:
    if key not in record:
        raise DataFileError(path, number, f"missing field {key!r}; a pair needs 'prompt' (or 'messages'), "
                                          "'chosen' and 'rejected', or two full transcripts 'chosen' and 'rejected'")
    value = record[key]
    if isinstance(value, list):
        _check_transcript(value, key, path, number)
        return [dict(m) for m in value]
    if not isinstance(value, str) or not value.strip():
        raise DataFileError(path, number, f"field {key!r} must be a transcript (text or a list of messages)")
    pieces = _TRANSCRIPT_TURN.split(value)
    if pieces[0].strip() or len(pieces) < 3:
        raise DataFileError(path, number, f"the {key!r} transcript must start with 'Human:' and alternate "
                                          "'\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[speaker], "content": text.strip()} for speaker, text in zip(pieces[1::2], pieces[2::2])]
    _check_transcript(messages, key, path, number)
    return messages


def _check_transcript(messages: list, key: str, path, number: int | None) -> None:
    try:
        check_messages(messages, path, number, last="assistant")
    except DataFileError as e:
        raise DataFileError(path, number, f"the {key!r} transcript: {e.problem}") from None


def collect_model_preferences(models: Sequence, tokenizer, records: Sequence[dict], annotator: Annotator,
                              temperatures: Sequence[float] = (0.7, 1.0), n: int = 256, *,
                              max_new_tokens: int = 48, batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Fresh pairs from the current model(s) (SPEC §7): for `n` prompts drawn from `records`,
    two replies from different (model, temperature) variants, labelled by the world's
    simulated `annotator` (`collect_preferences`). Rows are in the preference-file layout
    (``prompt``/``messages``, ``chosen``, ``rejected``, ``rating``, ``safety_label``);
    excluded safety pairs and identical replies are dropped, so fewer than `n` may come back."""
    from ..eval.chat import record_dialog
    from ..generate import SamplingParams, chat_replies

    if not models or not temperatures:
        raise ValueError("collect_model_preferences needs at least one model and one temperature")
    rng = random.Random(f"model-preferences/{seed}")
    chosen_records = [records[rng.randrange(len(records))] for _ in range(n)]
    variants = [(m, t) for m in range(len(models)) for t in temperatures]
    # Each prompt gets two distinct variants when there are two; a single variant samples twice.
    picks = [rng.sample(range(len(variants)), 2) if len(variants) > 1 else [0, 0] for _ in chosen_records]
    replies: list[list[str]] = [["", ""] for _ in chosen_records]
    for v, (model_index, temperature) in enumerate(variants):
        slots = [(i, side) for i, pair in enumerate(picks) for side in (0, 1) if pair[side] == v]
        if not slots:
            continue
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=0.95,
                                seed=seed * 1000 + v)
        dialogs = [record_dialog(chosen_records[i]) for i, _ in slots]
        completions = chat_replies(models[model_index], tokenizer, dialogs, params, batch_size=batch_size)
        for (i, side), completion in zip(slots, completions):
            replies[i][side] = completion.text
    by_position = iter(replies)
    return collect_preferences(chosen_records, lambda record: tuple(next(by_position)), annotator)
