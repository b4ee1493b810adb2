"""Ghost Attention system instructions (SPEC §9): style, persona, language, length and
hobby, alone or combined, each with the checks a response must pass on every turn, and
``apply_instruction`` that turns a plain gold answer into one that follows them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from llamaforge.world import lexicon
from llamaforge.world.language import to_veltan

INSTRUCTION_TYPES = ("style", "persona", "language", "length", "hobby")
# Pairs that cannot both hold (a hobby sentence breaks a word limit, and so on).
# A one-word answer is often only a name, which has no language, so length and language
# do not combine either.
_INCOMPATIBLE = {frozenset(("length", other)) for other in ("hobby", "persona", "style", "language")}


@dataclass(frozen=True)
class Instruction:
    types: tuple[str, ...]
    text: str  # the full instruction, e.g. "Always act as a pirate from now on."
    short: str  # the shortened form used half of the time, e.g. "Figure: pirate" (SPEC §9)
    checks: list[dict] = field(default_factory=list)


# Styles that only change letter case; the others add English words, which would break
# an instruction to answer in Veltan.
_CASE_STYLES = ("lowercase", "uppercase")


def _one(kind: str, rng: random.Random, case_only: bool = False) -> Instruction:
    if kind == "style":
        name = rng.choice(_CASE_STYLES if case_only else sorted(lexicon.GATT_STYLES))
        text, short, checks = lexicon.GATT_STYLES[name]
        return Instruction((kind,), text, short, [dict(c) for c in checks])
    if kind == "persona":
        persona = rng.choice(sorted(lexicon.PERSONAS))
        spec = lexicon.PERSONAS[persona]
        check = {"check": "starts_with", "value": spec["start"]} if "start" in spec else \
            {"check": "ends_with", "value": spec["end"]}
        text, short = (t.format(persona=persona) for t in lexicon.GATT_PERSONA)
        return Instruction((kind,), text, short, [check])
    if kind == "language":
        text, short = lexicon.GATT_LANGUAGE
        return Instruction((kind,), text, short, [{"check": "language", "value": "veltan"}])
    if kind == "length":
        name = rng.choice(sorted(lexicon.GATT_LENGTH))
        text, short, checks = lexicon.GATT_LENGTH[name]
        return Instruction((kind,), text, short, [dict(c) for c in checks])
    if kind == "hobby":
        hobby = rng.choice(lexicon.HOBBIES)
        text, short = (t.format(hobby=hobby) for t in lexicon.GATT_HOBBY)
        return Instruction((kind,), text, short, [{"check": "contains", "value": hobby}])
    raise ValueError(f"unknown instruction type {kind!r}; known: {', '.join(INSTRUCTION_TYPES)}")


def random_instruction(rng: random.Random, combine: float = 0.3) -> Instruction:
    """One instruction; with probability ``combine`` two compatible ones joined."""
    kinds = [rng.choice(INSTRUCTION_TYPES)]
    others = [k for k in INSTRUCTION_TYPES if k != kinds[0] and frozenset((kinds[0], k)) not in _INCOMPATIBLE]
    if others and rng.random() < combine:
        kinds.append(rng.choice(others))
    parts = [_one(kind, rng, case_only="language" in kinds) for kind in kinds]
    # Two instructions cannot both fix how an answer starts (or ends): keep the first.
    if len(parts) == 2 and _edges(parts[0]) & _edges(parts[1]):
        parts = parts[:1]
    return Instruction(
        types=tuple(t for p in parts for t in p.types),
        text=" ".join(p.text for p in parts),
        short=", ".join(p.short for p in parts),
        checks=[c for p in parts for c in p.checks],
    )


def _edges(instruction: Instruction) -> set[str]:
    return {c["check"] for c in instruction.checks if c["check"] in ("starts_with", "ends_with")}


def apply_instruction(answer: str, short_answer: str, checks: list[dict]) -> str:
    """Rewrite a gold answer so that it passes ``checks``.

    Order matters: pick the content (a word limit keeps only the short answer), add the
    hobby, translate, then add persona or style words, then change case.
    """
    by_name = {c["check"]: c.get("value") for c in checks}
    text = answer
    if "max_words" in by_name:
        text = short_answer + "."
    if "contains" in by_name:
        text = f"{text} {lexicon.HOBBY_SENTENCE.format(hobby=by_name['contains'])}"
    if by_name.get("language") == "veltan":
        text = to_veltan(text)
    if "starts_with" in by_name:
        text = f"{by_name['starts_with']} {text}"
    if "ends_with" in by_name:
        text = f"{text} {by_name['ends_with']}"
    if "uppercase" in by_name:
        text = text.upper()
    if "lowercase" in by_name:
        text = text.lower()
    return text


def turn_record(gatt_record: dict, turn: int) -> dict:
    """One turn of a GAtt record as a helpful record whose checks are the instruction's,
    so ``judges.helpfulness`` and ``judges.adherence`` score it directly."""
    t = gatt_record["turns"][turn]
    record = {"kind": "helpful", "task": "gatt_turn", "id": f"{gatt_record.get('id', 'gatt')}/turn-{turn}",
              **{k: v for k, v in t.items() if k != "gold"}, "answer": t["gold"], "checks": gatt_record["checks"]}
    if any(c["check"] == "language" for c in gatt_record["checks"]):
        record["answer_language"] = "veltan"
    return record
