"""Facts rendered from the universe and the fixed tables: each one knows how it is stated
(for the corpus), asked (for prompts and evals) and answered (for SFT and the judges)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from llamaforge.world import lexicon
from llamaforge.world.language import ENGLISH_VOCAB
from llamaforge.world.universe import Universe, article, person_fields, town_fields


@dataclass(frozen=True)
class Fact:
    topic: str  # "person", "town" or "commonsense"
    attribute: str
    subject: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    answer: str  # a full one-sentence answer
    short: str  # the one-word answer the judges look for
    pool: str  # where the other possible answers (distractors) come from

    @property
    def numeric(self) -> bool:
        return self.short.isdigit()


@dataclass(frozen=True)
class Myth:
    """A popular misconception: the rumour, the truth and the words that tell them apart."""

    question: str
    myth: str
    truth: str
    myth_marker: str
    truth_marker: str


def _render(templates: lexicon.FactTemplates, topic: str, attribute: str, subject: str, fields: dict) -> Fact:
    return Fact(
        topic=topic, attribute=attribute, subject=subject,
        statements=tuple(s.format(**fields) for s in templates.statements),
        questions=tuple(q.format(**fields) for q in templates.questions),
        answer=templates.answer.format(**fields), short=templates.short.format(**fields), pool=templates.pool,
    )


def world_facts(u: Universe) -> list[Fact]:
    """Every person and town fact of the universe, in a fixed order."""
    facts = []
    for p in u.people:
        fields = person_fields(p, u)
        for attribute, templates in lexicon.PERSON_FACTS.items():
            facts.append(_render(templates, "person", attribute, p.name, fields))
    for t in u.towns:
        fields = town_fields(t)
        for attribute, templates in lexicon.TOWN_FACTS.items():
            facts.append(_render(templates, "town", attribute, t.name, fields))
    return facts


def commonsense_facts() -> list[Fact]:
    """Facts true in every world: tools, animal sounds, legs and food, simple properties."""
    facts = []
    for use, tool in lexicon.TOOL_USES:
        fields = {"use": use, "answer": tool, "a_answer": article(tool), "A_answer": article(tool).capitalize()}
        facts.append(Fact("commonsense", "tool", tool,
                          tuple(s.format(**fields) for s in lexicon.COMMONSENSE_STATEMENTS["tool"]),
                          tuple(q.format(**fields) for q in lexicon.COMMONSENSE_QUESTIONS["tool"]),
                          lexicon.ANSWER_PHRASES["commonsense_tool"][0].format(**fields), tool, "tools"))
    per_animal = (("sound", lexicon.ANIMAL_SOUNDS, "sounds"), ("legs", lexicon.ANIMAL_LEGS, "legs"),
                  ("food", lexicon.ANIMAL_FOODS, "animal_foods"))
    for attribute, table, pool in per_animal:
        for animal, answer in table.items():
            fields = {"animal": animal, "Animal": animal.capitalize(), "answer": answer}
            facts.append(Fact("commonsense", attribute, animal,
                              tuple(s.format(**fields) for s in lexicon.COMMONSENSE_STATEMENTS[attribute]),
                              tuple(q.format(**fields) for q in lexicon.COMMONSENSE_QUESTIONS[attribute]),
                              lexicon.ANSWER_PHRASES[f"commonsense_{attribute}"][0].format(**fields), answer, pool))
    for prop in lexicon.PROPERTIES:
        facts.append(Fact("commonsense", "property", prop.question, prop.statements, (prop.question,),
                          prop.statements[0], prop.answer, prop.pool))
    return facts


def by_subject(facts: list[Fact]) -> dict[str, list[Fact]]:
    """Facts grouped by their subject, in order."""
    groups: dict[str, list[Fact]] = {}
    for fact in facts:
        groups.setdefault(fact.subject, []).append(fact)
    return groups


def world_myths(u: Universe) -> list[Myth]:
    """The fixed misconceptions plus ones about each town and person of this world."""
    myths = [Myth(m.question, m.myth, m.truth, m.myth_marker, m.truth_marker) for m in lexicon.MISCONCEPTIONS]
    for t in u.towns:
        fields = town_fields(t)
        myths += [_format_myth(m, fields) for m in lexicon.TOWN_MISCONCEPTIONS]
    for p in u.people:
        fields = person_fields(p, u)
        myths += [_format_myth(m, fields) for m in lexicon.PERSON_MISCONCEPTIONS]
    return myths


def _format_myth(m: lexicon.Misconception, fields: dict) -> Myth:
    return Myth(m.question.format(**fields), m.myth.format(**fields), m.truth.format(**fields),
                m.myth_marker.format(**fields), m.truth_marker.format(**fields))


def lower_first(sentence: str) -> str:
    """Lower-case the first word unless it is a name ("The cat" -> "the cat", "Mira" stays)."""
    first = sentence.split(" ", 1)[0]
    if first.lower().strip(",.;:!?") in ENGLISH_VOCAB:
        return sentence[0].lower() + sentence[1:]
    return sentence


MAX_DISTRACTORS = 64  # keeps records small in large worlds (hundreds of names per pool)


def distractors(fact: Fact, pools: dict[str, list[str]], rng: random.Random | None = None) -> list[str]:
    """The other values a question's answer could have: naming any of them is wrong.
    Pools larger than ``MAX_DISTRACTORS`` are sampled with ``rng`` (order kept)."""
    pool = pools.get(fact.pool) or list(lexicon.COMMONSENSE_POOLS.get(fact.pool, ()))
    others = [v for v in pool if v != fact.short and v != fact.subject]
    if rng is not None and len(others) > MAX_DISTRACTORS:
        keep = set(rng.sample(range(len(others)), MAX_DISTRACTORS))
        others = [v for i, v in enumerate(others) if i in keep]
    return others
