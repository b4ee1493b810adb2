"""Typical good and bad responses to a record, labelled: the gold answer, a wrong one, one
that lists every candidate, a false refusal, an unsafe compliance, ... They seed the
offline preference pairs and show each judge's range in the datacard."""

from __future__ import annotations

import random
from collections.abc import Iterable

from llamaforge.world import lexicon
from llamaforge.world.judges import helpfulness
from llamaforge.world.language import to_veltan
from llamaforge.world.tasks import takes_closing, with_closing


def _wrong(record: dict, rng: random.Random) -> str | None:
    short, answer = record.get("short_answer", ""), record.get("answer", "")
    if record.get("numeric") and short.isdigit():
        replacement = str(int(short) + rng.choice((1, -1, 10)))
    elif record.get("distractors"):
        replacement = rng.choice(record["distractors"])
    else:
        return None
    return answer.replace(short, replacement) if short and short in answer else replacement + "."


def _list_all(record: dict) -> str | None:
    options = [group[0] for group in record.get("required", ())] + list(record.get("distractors", ()))[:6]
    return "It could be " + ", ".join(options) + "." if len(options) > 1 else None


def candidate_responses(record: dict, rng: random.Random, other_answer: str = "") -> list[tuple[str, str]]:
    """(label, response) pairs, best first for a gold judge: the gold answer, then
    plausible mistakes for this kind of prompt."""
    answer = record.get("answer", "")
    off_topic = [("off_topic", other_answer)] if other_answer and other_answer != answer else []
    if record.get("kind") == "adversarial":
        steps = " ".join(record.get("unsafe_markers", ()))
        refusal = rng.choice(lexicon.BARE_REFUSALS)
        return [
            ("gold", answer),
            ("bare_refusal", refusal),
            ("unsafe", record.get("unsafe_answer", steps)),
            ("sneaky", f"{refusal} But here is how: {steps}"),
            ("toxic", "Only " + rng.choice(lexicon.INSULT_NOUNS) + " ask that. You are " + rng.choice(lexicon.INSULTS[:10]) + "."),
        ] + off_topic
    out = [("gold", answer)]
    short = record.get("short_answer", "")
    if short and short != answer and record.get("task") not in ("translate", "truthful", "borderline"):
        out.append(("short", short[0].upper() + short[1:] + "."))
    wrong = _wrong(record, rng)
    if wrong and wrong != answer:
        out.append(("wrong", wrong))
    listed = _list_all(record)
    if listed and record.get("task") != "translate":
        out.append(("list_all", listed))
    out.append(("false_refusal", rng.choice(lexicon.BARE_REFUSALS)))
    # Longer than the judges' concision limit (three times the answer, at least 12 words).
    out.append(("verbose", " ".join([answer] * max(4, 40 // max(1, len(answer.split())) + 1))))
    out.append(("toxic", f"{answer} Only {rng.choice(lexicon.INSULT_NOUNS)} ask that."))
    if record.get("answer_language", "english") == "english" and not record.get("checks"):
        out.append(("wrong_language", to_veltan(answer)))
    # Drop variants that came out identical to the gold answer (e.g. "12 + 30 = 42." has
    # no word to translate).
    return [out[0]] + [(label, text) for label, text in out[1:] + off_topic if text != answer]


CONTRASTS = ("wrong fact", "repeated", "closing")


def contrast_pairs(records: Iterable[dict], rng: random.Random) -> dict[str, list[tuple[dict, str, str]]]:
    """(record, better, worse) pairs that differ in one respect, to see what a reward model tells
    apart. The gold answer of each helpful record against:
    - "wrong fact": the same answer with one fact wrong (another candidate, or a number off),
    - "repeated": the answer said four times (past the gold judge's concision limit),
    - "closing": the answer closed with the SFT annotators' pleasantry.
    A pair is kept only where the gold judge scores the gold answer strictly higher (the closing
    costs helpfulness on short answers only)."""
    out: dict[str, list[tuple[dict, str, str]]] = {name: [] for name in CONTRASTS}
    for record in records:
        answer = record.get("answer", "")
        if record.get("kind") != "helpful" or not answer:
            continue
        short = record.get("short_answer", "")
        wrong = _wrong(record, rng) if short and short != answer and short in answer else None  # one fact swapped
        worse = {"wrong fact": wrong, "repeated": " ".join([answer] * 4),
                 "closing": with_closing(answer) if takes_closing(record) else None}
        for name in CONTRASTS:
            if worse[name] and helpfulness(record, answer) > helpfulness(record, worse[name]):
                out[name].append((record, answer, worse[name]))
    return out
