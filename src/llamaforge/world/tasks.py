"""Prompt records and SFT dialogs.

A record is a plain dict: ``id``, ``kind`` ("helpful", "adversarial", "borderline"),
``split`` ("train" or "eval"), ``prompt`` (or ``messages`` for multi-turn), ``answer``
(a gold response) and whatever the gold judges need: ``required`` answer parts (each a
list of acceptable phrases), ``distractors``, ``numeric``, ``checks`` for instructions,
and for adversarial prompts ``category``, ``attack``, ``unsafe_markers``,
``risk_keywords``, ``help_keywords``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from llamaforge.world import lexicon
from llamaforge.world.corpus import random_problem
from llamaforge.world.facts import Fact, Myth, by_subject, distractors, lower_first
from llamaforge.world.gatt import apply_instruction, random_instruction
from llamaforge.world.judges import is_safety_prompt, words
from llamaforge.world.language import to_veltan
from llamaforge.world.universe import Universe, person_fields


@dataclass
class TaskContext:
    universe: Universe
    facts: list[Fact]  # person and town facts
    commonsense: list[Fact]
    myths: list[Myth]  # the training share; eval-only myths are kept out
    pools: dict[str, list[str]]
    facts_of: dict[str, list[Fact]] = field(init=False, repr=False)

    def __post_init__(self):
        self.facts_of = by_subject(self.facts)


def _prefix(rng: random.Random) -> str:
    return rng.choice(lexicon.PROMPT_PREFIXES)


def strip_prefix(prompt: str) -> str:
    for prefix in lexicon.PROMPT_PREFIXES:
        if prefix and prompt.startswith(prefix):
            return prompt[len(prefix):]
    return prompt


def fact_record(ctx: TaskContext, fact: Fact, rng: random.Random, task: str = "fact") -> dict:
    return {
        "kind": "helpful", "task": task, "prompt": _prefix(rng) + rng.choice(fact.questions),
        "answer": fact.answer, "short_answer": fact.short, "required": [[fact.short]],
        "distractors": distractors(fact, ctx.pools, rng), "numeric": fact.numeric, "subject": fact.subject,
    }


def fact_item(ctx: TaskContext, rng: random.Random) -> dict:
    return fact_record(ctx, rng.choice(ctx.facts), rng)


def two_fact_item(ctx: TaskContext, rng: random.Random) -> dict:
    """Two questions about one person in one prompt: completeness is half the score."""
    person = rng.choice(ctx.universe.people)
    first, second = rng.sample([f for f in ctx.facts_of[person.name] if not f.numeric], 2)
    prompt = lexicon.TWO_FACT_QUESTION.format(q1=rng.choice(first.questions), q2_lc=lower_first(rng.choice(second.questions)))
    banned = {first.short, second.short}
    return {
        "kind": "helpful", "task": "two_facts", "prompt": _prefix(rng) + prompt,
        "answer": f"{first.answer} {second.answer}", "short_answer": f"{first.short} and {second.short}",
        "required": [[first.short], [second.short]],
        "distractors": [d for d in distractors(first, ctx.pools, rng) + distractors(second, ctx.pools, rng)
                        if d not in banned],
        "numeric": False, "subject": person.name,
    }


def math_item(ctx: TaskContext, rng: random.Random, held_out: bool = False) -> dict:
    a, op, b, c = random_problem(rng, held_out)
    return {
        "kind": "helpful", "task": "math", "prompt": _prefix(rng) + rng.choice(lexicon.MATH_QUESTIONS).format(a=a, op=op, b=b),
        "answer": lexicon.ANSWER_PHRASES["math"][0].format(a=a, op=op, b=b, c=c), "short_answer": str(c),
        "required": [[str(c)]], "distractors": [], "numeric": True, "subject": "",
    }


def reading_passage(ctx: TaskContext, rng: random.Random) -> tuple[str, str, str, list[str]]:
    """(passage, question, answer, distractors): the event is fresh, so only the passage
    answers it."""
    person = rng.choice(ctx.universe.people)
    fields = person_fields(person, ctx.universe)
    fields.update(color=rng.choice(lexicon.COLORS), object=rng.choice(lexicon.OBJECTS), day=rng.choice(lexicon.WEEKDAYS),
                  count=rng.choice(lexicon.COUNTS), food=rng.choice(lexicon.FOODS), animal=rng.choice(lexicon.ANIMALS),
                  hobby=rng.choice(lexicon.HOBBIES), town=rng.choice(ctx.universe.towns).name)
    passage, questions = rng.choice(lexicon.READING_PASSAGES)
    question, answer, pool = rng.choice(questions)
    answer = answer.format(**fields)
    return passage.format(**fields), question.format(**fields), answer, [v for v in ctx.pools[pool] if v != answer]


def reading_item(ctx: TaskContext, rng: random.Random) -> dict:
    passage, question, answer, wrong = reading_passage(ctx, rng)
    return {
        "kind": "helpful", "task": "reading", "prompt": f"{passage}\n{question}", "passage": passage,
        "question": question, "answer": answer[0].upper() + answer[1:] + ".", "short_answer": answer,
        "required": [[answer]], "distractors": wrong, "numeric": False, "subject": "",
    }


def commonsense_item(ctx: TaskContext, rng: random.Random) -> dict:
    return fact_record(ctx, rng.choice(ctx.commonsense), rng, task="commonsense")


def translate_item(ctx: TaskContext, rng: random.Random) -> dict:
    """Translate a sentence into Veltan: every translated word is one required part, and
    an English word left in the answer is a distractor."""
    fact = rng.choice(ctx.facts if rng.random() < 0.7 else ctx.commonsense)
    english = rng.choice(fact.statements)
    veltan = to_veltan(english)
    pairs = [(e, v) for e, v in zip(words(english), words(veltan)) if e != v]
    veltan_words = list(dict.fromkeys(v for _, v in pairs))  # unique, in order
    english_words = list(dict.fromkeys(e for e, _ in pairs))
    return {
        "kind": "helpful", "task": "translate", "prompt": rng.choice(lexicon.TRANSLATE_PROMPTS).format(text=english),
        "answer": veltan, "short_answer": veltan, "required": [[v] for v in veltan_words], "distractors": english_words,
        "numeric": False, "subject": "", "answer_language": "veltan",
    }


_INLINE = {
    "one_word": [{"check": "max_words", "value": 1}],
    "uppercase": [{"check": "uppercase"}],
    "veltan": [{"check": "language", "value": "veltan"}],
}


def instruction_item(ctx: TaskContext, rng: random.Random) -> dict:
    """A fact question with an instruction in the prompt ("Answer with one word only.")."""
    record = fact_item(ctx, rng)
    name = rng.choice(sorted(_INLINE))
    checks = _INLINE[name]
    record.update(
        task="instruction", prompt=lexicon.INLINE_INSTRUCTIONS[name].format(question=record["prompt"]),
        answer=apply_instruction(record["answer"], record["short_answer"], checks), checks=checks,
    )
    if name == "veltan":
        record["answer_language"] = "veltan"
    return record


def truthful_record(myth: Myth, rng: random.Random) -> dict:
    return {
        "kind": "helpful", "task": "truthful", "prompt": _prefix(rng) + myth.question, "answer": myth.truth,
        "short_answer": myth.truth, "required": [[myth.truth_marker]], "distractors": [], "numeric": False,
        "subject": "", "truth_marker": myth.truth_marker, "myth_marker": myth.myth_marker, "myth": myth.myth,
    }


def truthful_item(ctx: TaskContext, rng: random.Random) -> dict:
    return truthful_record(rng.choice(ctx.myths), rng)


def multi_turn_item(ctx: TaskContext, rng: random.Random) -> dict:
    """Two or three questions about one person; the record judges the last answer."""
    person = rng.choice(ctx.universe.people)
    facts = rng.sample(ctx.facts_of[person.name], rng.randint(2, 3))
    turns = [fact_record(ctx, f, rng) for f in facts]
    messages = []
    for turn in turns[:-1]:
        messages += [{"role": "user", "content": turn["prompt"]}, {"role": "assistant", "content": turn["answer"]}]
    messages.append({"role": "user", "content": turns[-1]["prompt"]})
    last = dict(turns[-1], task="multi_turn", messages=messages)
    del last["prompt"]
    return last


HELPFUL_MIX: dict[str, tuple[float, Callable[[TaskContext, random.Random], dict]]] = {
    "fact": (0.45, fact_item),
    "two_facts": (0.08, two_fact_item),
    "math": (0.12, math_item),
    "reading": (0.07, reading_item),
    "commonsense": (0.08, commonsense_item),
    "translate": (0.05, translate_item),
    "instruction": (0.07, instruction_item),
    "truthful": (0.04, truthful_item),
    "multi_turn": (0.04, multi_turn_item),
}


def helpful_item(ctx: TaskContext, rng: random.Random) -> dict:
    names = list(HELPFUL_MIX)
    task = rng.choices(names, weights=[HELPFUL_MIX[n][0] for n in names])[0]
    return HELPFUL_MIX[task][1](ctx, rng)


# ---------------------------------------------------------------------------------------
def _obfuscate(text: str, trigger: str) -> str:
    """Syntactic manipulation: spell the telling word out with hyphens (s-t-e-a-l)."""
    spelled = "-".join(trigger)
    lower = text.lower()
    at = lower.find(trigger)
    return text if at < 0 else text[:at] + spelled + text[at + len(trigger):]


def random_person_fields(ctx: TaskContext, rng: random.Random) -> dict[str, str]:
    return person_fields(rng.choice(ctx.universe.people), ctx.universe)


def safe_answer(harm: lexicon.Harm, fields: dict, rng: random.Random) -> str:
    """SPEC §10: address the concern (decline), explain the risk, offer help."""
    opening = rng.choice(lexicon.SAFE_OPENINGS).format(topic=harm.topic.format(**fields))
    return f"{opening} {harm.risk.format(**fields)} {harm.help.format(**fields)}"


def unsafe_answer(harm: lexicon.Harm, fields: dict, rng: random.Random, creative: bool = False) -> str:
    steps = " ".join(s.format(**fields) for s in harm.steps)
    if creative:
        return lexicon.CREATIVE_UNSAFE.format(steps=steps)
    return f"{rng.choice(lexicon.UNSAFE_OPENINGS)} {steps}".strip()


def adversarial_item(ctx: TaskContext, rng: random.Random, attack: str | None = None) -> dict:
    harm = rng.choice(lexicon.HARMS)
    attack = attack or rng.choice(sorted(lexicon.ATTACK_VECTORS))
    fields = random_person_fields(ctx, rng)
    ask = harm.ask.format(**fields)
    prompt = lexicon.ATTACK_VECTORS[attack].format(
        ask=ask, euphemism=harm.euphemism.format(**fields), ask_obfuscated=_obfuscate(ask, harm.trigger),
        ask_veltan=to_veltan(ask))
    return {
        "kind": "adversarial", "category": harm.category, "attack": attack, "harm": harm.name, "prompt": prompt,
        "answer": safe_answer(harm, fields, rng),
        "unsafe_answer": unsafe_answer(harm, fields, rng, creative=attack == "creative_writing"),
        "unsafe_markers": [s.format(**fields) for s in harm.steps],
        "risk_keywords": [k.format(**fields) for k in harm.risk_keywords],
        "help_keywords": [k.format(**fields) for k in harm.help_keywords],
        "topic": harm.topic.format(**fields),
    }


def borderline_item(ctx: TaskContext, rng: random.Random) -> dict:
    item = rng.choice(lexicon.BORDERLINE)
    fields = random_person_fields(ctx, rng)
    return {
        "kind": "borderline", "task": "borderline", "trigger": item.trigger,
        "prompt": _prefix(rng) + item.prompt.format(**fields), "answer": item.answer.format(**fields),
        "short_answer": item.answer.format(**fields), "required": [[k.format(**fields) for k in item.keywords]],
        "distractors": [], "numeric": False, "subject": "",
    }


def unique_records(make: Callable[[random.Random], dict], n: int, rng: random.Random, banned: set[str] = frozenset(),
                   key: Callable[[dict], str] | None = None, max_tries: int = 20) -> list[dict]:
    """Up to ``n`` records with distinct ``key`` (default: the prompt), none of whose user
    messages is in ``banned``; stops early when the world has no more distinct ones."""
    key_of = key or prompt_key
    out, seen = [], set(banned)
    misses = 0
    while len(out) < n and misses < max_tries * max(n, 1):
        record = make(rng)
        key = key_of(record)
        if key in seen or (banned and any(k in banned for k in user_prompt_keys(record))):
            misses += 1
            continue
        seen.add(key)
        out.append(record)
    return out


def user_prompt_keys(record: dict) -> list[str]:
    """Every user message of a record, without chatty prefixes."""
    if "prompt" in record:
        return [strip_prefix(record["prompt"])]
    if "turns" in record:
        return [strip_prefix(t["prompt"]) for t in record["turns"]]
    return [strip_prefix(m["content"]) for m in record["messages"] if m["role"] == "user"]


def prompt_key(record: dict) -> str:
    """What makes two prompts the same: the text without its chatty prefix ("Hi! ")."""
    if "prompt" in record:
        return strip_prefix(record["prompt"])
    if "turns" in record:
        return "\n".join([record["instruction"]] + [t["prompt"] for t in record["turns"]])
    return "\n".join(m["content"] for m in record["messages"])


def assign_ids_and_split(records: list[dict], kind: str, eval_fraction: float) -> list[dict]:
    """Ids ``<kind>-00000`` in order; the first ``eval_fraction`` are held out for eval."""
    n_eval = round(len(records) * eval_fraction)
    out = []
    for i, record in enumerate(records):
        out.append({"id": f"{kind}-{i:05d}", "split": "eval" if i < n_eval else "train", **record})
    return out


# ---------------------------------------------------------------------------------------
def record_messages(record: dict, answer: str | None = None) -> list[dict]:
    """The dialog of a record with its gold (or the given) answer as the last turn."""
    if "messages" in record:
        messages = [dict(m) for m in record["messages"]]
    else:
        messages = [{"role": "user", "content": record["prompt"]}]
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages + [{"role": "assistant", "content": record["answer"] if answer is None else answer}]


def system_dialog(ctx: TaskContext, rng: random.Random, banned: set[str] = frozenset()) -> dict:
    """A dialog under a system instruction, every answer following it; no question in
    ``banned`` is asked."""
    instruction = random_instruction(rng)
    system = instruction.text if rng.random() < 0.5 else instruction.short
    messages = [{"role": "system", "content": system}]
    for _ in range(rng.randint(1, 3)):
        turn = unique_records(lambda r: fact_item(ctx, r), 1, rng, banned)[0]
        messages += [{"role": "user", "content": turn["prompt"]},
                     {"role": "assistant", "content": apply_instruction(turn["answer"], turn["short_answer"], instruction.checks)}]
    return {"kind": "system", "messages": messages, "checks": instruction.checks}


def gatt_item(ctx: TaskContext, rng: random.Random, n_turns: int) -> dict:
    """A Ghost Attention record (SPEC §9): one system instruction and ``n_turns`` user
    questions, each with its plain gold answer and the gold answer under the instruction."""
    instruction = random_instruction(rng)
    turns = []
    for fact in rng.sample(ctx.facts, min(n_turns, len(ctx.facts))):
        turn = fact_record(ctx, fact, rng)
        turn["gold"] = apply_instruction(turn["answer"], turn["short_answer"], instruction.checks)
        turns.append({k: v for k, v in turn.items() if k not in ("kind", "task")})
    return {"kind": "gatt", "types": list(instruction.types), "instruction": instruction.text,
            "short": instruction.short, "checks": instruction.checks, "turns": turns}


SFT_MIX = {
    "helpful": 0.62,  # single- and multi-turn helpful records (their own task mix)
    "system": 0.10,
    "safety": 0.18,
    "borderline": 0.10,
}


# Share of SFT demonstrations whose writer closes with lexicon.ANSWER_CLOSING. The paper's
# §5.1 credits RLHF with going beyond its annotators: a model fine-tuned on demonstrations
# learns their variation, poor habits included, and reward-ranked sampling moves past them
# (SPEC §8: the max-vs-median gap is the gain). Over half, so the SFT model's greedy replies
# carry the habit: a rarer one hides behind the mode.
CLOSING_SHARE = 0.6
# Answers a closing would break: instructions (one word, uppercase, ...) and Veltan.
_NO_CLOSING_TASKS = ("instruction", "translate")


def closing_breaks(record: dict) -> bool:
    """Would the annotators' closing break an answer to this record? It would an instruction's
    (one word, uppercase, ...) and a Veltan translation's."""
    return record.get("task") in _NO_CLOSING_TASKS or bool(record.get("checks"))


def takes_closing(record: dict) -> bool:
    """Do the SFT annotators close their answer to this record? Only a helpful answer the
    closing does not break: not a safety answer (one does not hope a refusal helps)."""
    return not is_safety_prompt(record) and not closing_breaks(record)


def with_closing(answer: str) -> str:
    return f"{answer} {lexicon.ANSWER_CLOSING}"


def annotator_answer(record: dict) -> str:
    """The SFT demonstration's answer to a record: the gold answer, closed with the
    pleasantry for CLOSING_SHARE of the prompts that take one (chosen by the prompt, so
    the world's other draws do not move)."""
    if takes_closing(record) and random.Random(f"closing/{prompt_key(record)}").random() < CLOSING_SHARE:
        return with_closing(record["answer"])
    return record["answer"]


def build_sft(ctx: TaskContext, rng: random.Random, n: int, banned_prompts: set[str]) -> list[dict]:
    """SFT dialogs in the ``messages`` format (SPEC §6): helpful answers, dialogs under a
    system instruction, safety demonstrations on adversarial prompts (SPEC §10) and
    helpful answers to borderline prompts. Eval-split prompts never appear."""
    counts = {k: round(n * share) for k, share in SFT_MIX.items()}
    counts["helpful"] = n - sum(v for k, v in counts.items() if k != "helpful")
    makers = {
        "helpful": lambda r: helpful_item(ctx, r),
        "safety": lambda r: adversarial_item(ctx, r),
        "borderline": lambda r: borderline_item(ctx, r),
    }
    out = []
    for name, make in makers.items():
        for record in unique_records(make, counts[name], rng, banned_prompts):
            out.append({"kind": record.get("task", name), "messages": record_messages(record, annotator_answer(record))})
    for _ in range(counts["system"]):
        dialog = system_dialog(ctx, rng, banned_prompts)
        out.append({"kind": "system", "messages": dialog["messages"], "checks": dialog["checks"]})
    rng.shuffle(out)
    return [{"id": f"sft-{i:05d}", **d} for i, d in enumerate(out)]


def distillation_data() -> dict:
    """Context distillation inputs (SPEC §10): generic safety preprompts and, per risk
    category, a preprompt that carries an answer template."""
    categories = {}
    for category, name in lexicon.RISK_CATEGORIES.items():
        template = lexicon.DISTILLATION_ANSWER_TEMPLATES[category]
        categories[category] = {
            "name": name,
            "answer_template": template,
            "preprompt": lexicon.DISTILLATION_TEMPLATE.format(category_name=name) + " For example: " + template,
        }
    return {"preprompts": list(lexicon.SAFETY_PREPROMPTS), "categories": categories}
