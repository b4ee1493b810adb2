"""The pretraining corpus: short documents in a closed vocabulary, by category.

Factual text is up-sampled (SPEC §5: "factual sources up-sampled"): every fact is stated
in many phrasings across many documents. The corpus also holds what the pretraining-data
audit of SPEC §10 must find: a small share of toxic text and a second language, plus
popular misconceptions stated as rumours (more often than the truth) for the
TruthfulQA-like eval, and some harmful how-to text, so a pretrained model really does
answer some adversarial prompts unsafely until safety tuning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

from llamaforge.world import lexicon
from llamaforge.world.facts import Fact, Myth, by_subject, lower_first
from llamaforge.world.language import to_veltan
from llamaforge.world.universe import Universe, person_fields

# Share of corpus characters per category (sums to 1). Encyclopedia facts get the largest
# share: the up-sampling of factual sources.
CORPUS_MIX = {
    "encyclopedia": 0.33,
    "stories": 0.14,
    "dialog": 0.16,
    "arithmetic": 0.12,
    "commonsense": 0.06,
    "misconceptions": 0.03,
    "veltan": 0.12,
    "toxic": 0.02,
    "harmful": 0.02,
}


@dataclass(frozen=True)
class Document:
    category: str
    text: str


@dataclass
class CorpusContext:
    universe: Universe
    facts: list[Fact]
    commonsense: list[Fact]
    myths: list[Myth]
    facts_of: dict[str, list[Fact]] = field(init=False, repr=False)

    def __post_init__(self):
        self.facts_of = by_subject(self.facts)


def cycle(rng: random.Random, items: list) -> Iterator:
    """Endless shuffled passes over ``items``: every item comes up equally often."""
    items = list(items)
    while True:
        rng.shuffle(items)
        yield from items


def is_held_out(a: int, b: int, op: str) -> bool:
    """About one arithmetic problem in ten is kept out of the corpus and SFT data and used
    only for evaluation (fixed by the operands, the same in every world)."""
    return (a * 31 + b * 17 + ord(op)) % 10 == 0


def _person_doc(ctx: CorpusContext, rng: random.Random, subject: str) -> str:
    facts = ctx.facts_of[subject]
    chosen = rng.sample(facts, rng.randint(min(4, len(facts)), len(facts)))
    fields = person_fields(ctx.universe.person(subject), ctx.universe)
    opening = rng.choice(lexicon.ENCYCLOPEDIA_OPENINGS).format(**fields)
    return " ".join(s for s in [opening] + [rng.choice(f.statements) for f in chosen] if s)


def _town_doc(ctx: CorpusContext, rng: random.Random, subject: str) -> str:
    facts = list(ctx.facts_of[subject])
    rng.shuffle(facts)
    residents = ctx.universe.residents(subject)
    people = residents[0] if len(residents) == 1 else ", ".join(residents[:-1]) + " and " + residents[-1]
    parts = [rng.choice(lexicon.TOWN_OPENINGS).format(town=subject)] + [rng.choice(f.statements) for f in facts]
    parts.insert(rng.randint(1, len(parts)), rng.choice(lexicon.TOWN_RESIDENTS).format(people=people, town=subject))
    return " ".join(s for s in parts if s)


def encyclopedia_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    # People and towns take turns so that small towns' few facts are not drowned out.
    people = cycle(rng, [p.name for p in ctx.universe.people])
    towns = cycle(rng, [t.name for t in ctx.universe.towns])
    while True:
        if rng.random() < 0.8:
            yield _person_doc(ctx, rng, next(people))
        else:
            yield _town_doc(ctx, rng, next(towns))


def story_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    people = cycle(rng, ctx.universe.people)
    while True:
        fields = person_fields(next(people), ctx.universe)
        fields["object"] = rng.choice(lexicon.OBJECTS)
        yield rng.choice(lexicon.STORIES).format(**fields)


def _chat(ctx: CorpusContext, rng: random.Random) -> str:
    a = rng.choice(ctx.universe.people)
    b = ctx.universe.person(a.friend)
    fields = person_fields(b, ctx.universe)
    fields.update(a=a.name, b=b.name)
    lines = [(a.name, rng.choice(lexicon.CHAT_OPENINGS)), (b.name, rng.choice(lexicon.CHAT_REPLIES))]
    for question, reply in rng.sample(lexicon.CHAT_EXCHANGES, rng.randint(1, 3)):
        lines += [(a.name, question), (b.name, reply)]
    bye_a, bye_b = rng.choice(lexicon.CHAT_CLOSINGS)
    lines += [(a.name, bye_a), (b.name, bye_b)]
    return "\n".join(f"{who}: {text.format(**fields)}" for who, text in lines)


def _question_answer(ctx: CorpusContext, rng: random.Random) -> str:
    q_label, a_label = rng.choice(lexicon.QA_LABELS)
    lines = []
    for _ in range(rng.randint(2, 4)):
        pool = ctx.facts if rng.random() < 0.8 else ctx.commonsense
        fact = rng.choice(pool)
        lines += [f"{q_label} {rng.choice(fact.questions)}", f"{a_label} {fact.answer}"]
    return "\n".join(lines)


def dialog_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    while True:
        yield _chat(ctx, rng) if rng.random() < 0.4 else _question_answer(ctx, rng)


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def _carry_columns(columns: list[tuple[int, int]], op: str) -> list[str]:
    """Column work for ``+`` and ``*`` (by one digit): one line per digit, ones first,
    carrying into the next column."""
    t, places = lexicon.ARITHMETIC, lexicon.ARITHMETIC["places"]
    lines, carry = [], 0
    for i, (x, y) in enumerate(columns):
        s = (x + y if op == "+" else x * y) + carry
        step = (t["step_carry"] if carry else t["step"]).format(x=x, op=op, y=y, c=carry, s=s)
        carry = s // 10
        write = (t["write_carry"] if carry else t["write"]).format(w=s % 10, c=carry)
        lines.append(f"{places[i]}: {step} {write}")
    if carry:
        lines.append(f"{places[len(lines)]}: " + t["final_carry"].format(c=carry))
    return lines


def worked_addition(a: int, b: int) -> list[str]:
    """Column addition."""
    da, db = _digits(a), _digits(b)
    n = max(len(da), len(db))
    return _carry_columns([(da[i] if i < len(da) else 0, db[i] if i < len(db) else 0) for i in range(n)], "+")


def worked_subtraction(a: int, b: int) -> list[str]:
    """Column subtraction with borrowing, ``a >= b``."""
    t, places = lexicon.ARITHMETIC, lexicon.ARITHMETIC["places"]
    da, db = _digits(a), _digits(b)
    lines, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i], db[i] if i < len(db) else 0
        parts = []
        if borrow:  # pay the borrow back on the lower digit, so no digit goes negative
            parts.append(t["sub_pay"].format(y=y, y1=y + 1))
            y += 1
        borrow = int(x < y)
        if borrow:
            parts.append(t["sub_borrow"].format(x=x, y=y, xb=x + 10))
            x += 10
        parts += [t["sub_step"].format(x=x, y=y, s=x - y), t["write"].format(w=x - y)]
        lines.append(f"{places[i]}: " + " ".join(parts))
    return lines


def worked_multiplication(a: int, b: int) -> list[str]:
    """A number times one digit, ``b < 10``."""
    return _carry_columns([(x, b) for x in _digits(a)], "*")


def random_problem(rng: random.Random, held_out: bool = False) -> tuple[int, str, int, int]:
    """(a, op, b, result) with two- or three-digit operands; ``held_out`` picks from the
    eval-only problems, otherwise from the rest."""
    while True:
        op = rng.choice("+-*")
        if op == "*":
            # Two digits times one: single-digit products are steps of worked problems
            # and lines of the tables, so they cannot be held out.
            a, b = rng.randint(10, 99), rng.randint(2, 9)
        else:
            a, b = rng.randint(10, 999 if rng.random() < 0.3 else 99), rng.randint(10, 99)
            if op == "-" and b > a:
                a, b = b, a
        if is_held_out(a, b, op) == held_out:
            return a, op, b, {"+": a + b, "-": a - b, "*": a * b}[op]


def arithmetic_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    t = lexicon.ARITHMETIC
    worked = {"+": worked_addition, "-": worked_subtraction, "*": worked_multiplication}
    intros = {"+": "add_intro", "-": "sub_intro", "*": "mul_intro"}
    while True:
        kind = rng.random()
        if kind < 0.15:
            a = rng.randint(2, 9)
            lines = [t["table"].format(a=a)] + [t["fact"][0].format(a=a, op="*", b=b, c=a * b) for b in range(1, 11)
                                                if not is_held_out(a, b, "*")]
            yield " ".join(lines)
        elif kind < 0.35:
            facts = []
            for _ in range(rng.randint(3, 6)):
                a, op, b, c = random_problem(rng)
                facts.append(rng.choice(t["fact"]).format(a=a, op=op, b=b, c=c))
            yield " ".join(facts)
        else:
            a, op, b, c = random_problem(rng)
            lines = [rng.choice(t[intros[op]]).format(a=a, b=b)] + worked[op](a, b)
            lines.append(rng.choice(t["result"]).format(a=a, op=op, b=b, c=c))
            yield "\n".join(lines)


def commonsense_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    personas = [p["fact"] for p in lexicon.PERSONAS.values()]
    while True:
        sentences = [rng.choice(rng.choice(ctx.commonsense).statements) for _ in range(rng.randint(3, 6))]
        if rng.random() < 0.25:
            sentences.insert(rng.randint(0, len(sentences)), rng.choice(personas))
        yield " ".join(sentences)


def misconception_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    """Rumours twice as often as the truth: a pretrained model repeats them (TruthfulQA)."""
    myths = cycle(rng, ctx.myths)
    while True:
        m = next(myths)
        if rng.random() < 2 / 3:
            yield rng.choice(lexicon.RUMOUR_FRAMES).format(myth_lc=lower_first(m.myth))
        else:
            yield rng.choice(lexicon.TRUTH_FRAMES).format(myth_lc=lower_first(m.myth), truth_lc=lower_first(m.truth))


def veltan_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    """Translations of ordinary documents, and parallel English/Veltan sentences."""
    sources = [encyclopedia_docs(ctx, rng), story_docs(ctx, rng), commonsense_docs(ctx, rng), dialog_docs(ctx, rng)]
    while True:
        if rng.random() < 0.75:
            yield to_veltan(next(rng.choice(sources)))
        else:
            pairs = []
            for _ in range(rng.randint(2, 4)):
                fact = rng.choice(ctx.facts if rng.random() < 0.7 else ctx.commonsense)
                english = rng.choice(fact.statements)
                pairs.append(rng.choice(lexicon.PARALLEL_FRAMES).format(english=english, veltan=to_veltan(english)))
            yield "\n".join(pairs)


def group_fields(ctx: CorpusContext, rng: random.Random) -> dict[str, str]:
    """A demographic group of the world (for toxic text, the audit and ToxiGen-like prompts)."""
    group = rng.choice(lexicon.GROUP_TEMPLATES).format(town=rng.choice(ctx.universe.towns).name,
                                                       job=rng.choice(lexicon.JOBS))
    return {"group": group, "Group": group[0].upper() + group[1:]}


def toxic_statement(fields: dict, rng: random.Random) -> str:
    insult, insult2 = rng.sample(lexicon.INSULTS[:10], 2)
    return rng.choice(lexicon.TOXIC_STATEMENTS).format(
        insult=insult, insult2=insult2, insult_noun=rng.choice(lexicon.INSULT_NOUNS), **fields)


def toxic_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    while True:
        if rng.random() < 0.7:
            fields = group_fields(ctx, rng)
            yield " ".join(toxic_statement(fields, rng) for _ in range(rng.randint(1, 3)))
        else:
            a, b = rng.sample(ctx.universe.people, 2)
            line = rng.choice(lexicon.RUDE_LINES).format(
                insult=rng.choice(lexicon.INSULTS[:10]), insult_noun=rng.choice(lexicon.INSULT_NOUNS), name=b.name)
            yield f"{a.name}: {line}"


def harmful_docs(ctx: CorpusContext, rng: random.Random) -> Iterator[str]:
    """Forum-style how-to text for the world's harms: what an unaligned model has read."""
    harms = cycle(rng, list(lexicon.HARMS))
    while True:
        harm = next(harms)
        fields = person_fields(rng.choice(ctx.universe.people), ctx.universe)
        q_label, a_label = rng.choice(lexicon.QA_LABELS)
        steps = " ".join(s.format(**fields) for s in harm.steps)
        yield f"{q_label} {harm.ask.format(**fields)}\n{a_label} {steps}"


GENERATORS: dict[str, Callable[[CorpusContext, random.Random], Iterator[str]]] = {
    "encyclopedia": encyclopedia_docs,
    "stories": story_docs,
    "dialog": dialog_docs,
    "arithmetic": arithmetic_docs,
    "commonsense": commonsense_docs,
    "misconceptions": misconception_docs,
    "veltan": veltan_docs,
    "toxic": toxic_docs,
    "harmful": harmful_docs,
}


def generate_corpus(ctx: CorpusContext, total_chars: int, seed_rng: Callable[[str], random.Random],
                    mix: dict[str, float] | None = None) -> list[Document]:
    """Documents of every category until each has its share of ``total_chars``.

    Each category draws from its own random stream, so changing one share leaves the
    other categories' documents unchanged.
    """
    mix = mix or CORPUS_MIX
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ValueError(f"corpus mix shares must sum to 1, got {sum(mix.values()):.4f}: {mix}")
    unknown = [k for k in mix if k not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown corpus categories {unknown}; known: {sorted(GENERATORS)}")
    docs = []
    for category, share in mix.items():
        budget = int(total_chars * share)
        generator = GENERATORS[category](ctx, seed_rng(f"corpus/{category}"))
        used = 0
        while used < budget:
            text = next(generator)
            docs.append(Document(category, text))
            used += len(text) + 2  # documents are separated by a blank line on disk
    return docs
