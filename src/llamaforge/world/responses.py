"""Typical good and bad responses to a record, labelled: the gold answer, a wrong one, one
that lists every candidate, a false refusal, an unsafe compliance, ... They seed the
offline preference pairs and show each judge's range in the datacard. `contrast_pairs` sets
the gold answer against itself changed in one respect, to probe what a reward model tells apart."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from llamaforge.world import lexicon
from llamaforge.world.judges import helpfulness
from llamaforge.world.language import to_veltan
from llamaforge.world.tasks import takes_closing, with_closing


def _wrong_value(record: dict, rng: random.Random) -> str | None:
    """A wrong short answer: the number off by 1, -1 or 10, or another candidate."""
    short = record.get("short_answer", "")
    if record.get("numeric") and short.isdigit():
        return str(int(short) + rng.choice((1, -1, 10)))
    if record.get("distractors"):
        return rng.choice(record["distractors"])
    return None


def _wrong(record: dict, rng: random.Random) -> str | None:
    short, answer = record.get("short_answer", ""), record.get("answer", "")
    replacement = _wrong_value(record, rng)
    if replacement is None:
        return None
    return answer.replace(short, replacement) if short and short in answer else replacement + "."


def _one_fact_wrong(record: dict, rng: random.Random) -> str | None:
    """The gold answer with its last whole-word occurrence of the short answer swapped for a wrong
    one ("84 - 42 = 42." -> "84 - 42 = 52."), or None where the short answer is not a part of it."""
    short, answer = record.get("short_answer", ""), record.get("answer", "")
    found = list(re.finditer(rf"(?<!\w){re.escape(short)}(?!\w)", answer)) if short and short != answer else []
    replacement = _wrong_value(record, rng) if found else None
    if replacement is None or replacement == short:
        return None
    at = found[-1]
    return answer[: at.start()] + replacement + answer[at.end() :]


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


# name -> what the gold answer is set against
CONTRASTS = {"wrong fact": "itself with one fact wrong", "repeated": "itself said four times",
             "closing": "itself closed with the annotators' pleasantry"}


def contrast_pairs(records: Iterable[dict], rng: random.Random) -> dict[str, list[tuple[dict, str, str]]]:
    """(record, better, worse) pairs that differ in one respect, to see what a reward model tells
    apart. The gold answer of each helpful record against:
    - "wrong fact": the same answer with one fact wrong (another candidate, or a number off),
    - "repeated": the answer said four times,
    - "closing": the answer closed with the SFT annotators' pleasantry.
    A pair is kept only where the gold judge scores the gold answer strictly higher: the repeats
    and the closing cost helpfulness only past the judge's concision limit (short answers)."""
    out: dict[str, list[tuple[dict, str, str]]] = {name: [] for name in CONTRASTS}
    for record in records:
        answer = record.get("answer", "")
        if record.get("kind") != "helpful" or not answer:
            continue
        worse = {"wrong fact": _one_fact_wrong(record, rng), "repeated": " ".join([answer] * 4),
                 "closing": with_closing(answer) if takes_closing(record) else None}
        gold = helpfulness(record, answer)
        for name in CONTRASTS:
            if worse[name] and gold > helpfulness(record, worse[name]):
                out[name].append((record, answer, worse[name]))
    return out
