"""The built-in world: one seeded object holding the data for every stage of the paper.

``World.generate(seed, size)`` builds the universe, the pretraining corpus, SFT dialogs,
prompt sets (helpful, adversarial, borderline), Ghost Attention instructions, context
distillation preprompts, eval suites and offline preference pairs. The same seed always
gives byte-identical data: every random choice comes from a ``random.Random`` seeded
with a string derived from the seed and the part being built, never from global state,
``hash()`` or set order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator

from llamaforge.world.annotator import Annotator, collect_preferences
from llamaforge.world.corpus import CorpusContext, Document, generate_corpus
from llamaforge.world.evals import build_evals
from llamaforge.world.facts import commonsense_facts, world_facts, world_myths
from llamaforge.world.language import detect_language
from llamaforge.world.responses import candidate_responses
from llamaforge.world.tasks import (
    CLOSING_SHARE, TaskContext, adversarial_item, assign_ids_and_split, borderline_item, build_sft, closing_breaks,
    distillation_data, gatt_item, helpful_item, prompt_key, takes_closing, unique_records, with_closing,
)
from llamaforge.world.universe import Universe, generate_universe

PROMPT_KINDS = ("helpful", "adversarial", "borderline")
# Share of the helpful pairs that compare the gold answer with itself closed by the
# annotators' pleasantry: two samples of one model often differ only so. Without them the
# closing's cost hid among pairs whose answers differ in everything (or are both wrong). The
# reward stage's `contrast/closing` probe shows whether a helpfulness RM learned it.
STYLE_PAIR_SHARE = 0.15


@dataclass(frozen=True)
class WorldSize:
    """How big a world is. ``corpus_chars`` is the pretraining text budget; the other
    counts are upper bounds (a small world may have fewer distinct prompts)."""

    name: str
    n_people: int
    n_towns: int
    corpus_chars: int
    n_sft: int
    n_helpful: int
    n_adversarial: int
    n_borderline: int
    n_gatt: int
    gatt_turns: int
    n_eval: int  # items per eval suite
    n_preferences: int  # offline pairs per collection (helpfulness and safety)
    eval_fraction: float = 0.25  # share of each prompt set held out for evaluation
    myth_eval_fraction: float = 0.4  # misconceptions kept out of SFT for the TruthfulQA-like suite


SIZES = {
    # Unit tests: a few hundred KB, generated in about a second.
    "tiny": WorldSize("tiny", n_people=12, n_towns=4, corpus_chars=300_000, n_sft=300, n_helpful=120,
                      n_adversarial=96, n_borderline=48, n_gatt=24, gatt_turns=4, n_eval=40, n_preferences=200),
    # The demo: a few MB that a ~5M-parameter model learns in minutes on a CPU.
    "demo": WorldSize("demo", n_people=48, n_towns=8, corpus_chars=5_000_000, n_sft=4000, n_helpful=1200,
                      n_adversarial=480, n_borderline=240, n_gatt=200, gatt_turns=6, n_eval=300, n_preferences=3000),
    # Hours of training: more people, more text, 20-turn GAtt dialogs (SPEC §9).
    "large": WorldSize("large", n_people=600, n_towns=60, corpus_chars=80_000_000, n_sft=40_000, n_helpful=10_000,
                       n_adversarial=4000, n_borderline=2000, n_gatt=2000, gatt_turns=20, n_eval=2000,
                       n_preferences=30_000),
}


def resolve_size(size: str | WorldSize) -> WorldSize:
    if isinstance(size, WorldSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)} or pass a WorldSize")
    return SIZES[size]


def seeded(seed: int):
    """A factory of independent random streams, one per named part of the world."""
    return lambda part: random.Random(f"llamaforge-world/{seed}/{part}")


@dataclass
class World:
    """All the data of one world. ``corpus``: pretraining documents by category; ``sft``:
    dialogs ``{"id", "kind", "messages"}``; ``prompts``: records by kind ("helpful",
    "adversarial", "borderline"), each with ``split`` "train" or "eval"; ``gatt``: system
    instructions with turns; ``distillation``: safety preprompts and answer templates;
    ``evals``: items by suite; ``preferences``: bootstrap pairs by collection ("helpful",
    "safety"). ``universe`` is None for a world read from files without one."""

    seed: int
    size: str
    universe: Universe | None
    corpus: list[Document]
    sft: list[dict]
    prompts: dict[str, list[dict]]
    gatt: list[dict]
    distillation: dict
    evals: dict[str, list[dict]]
    preferences: dict[str, list[dict]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # piece -> user file that replaced it
    annotator_noise: float = 0.1  # label noise of the simulated annotator (SPEC §7)

    @classmethod
    def generate(cls, seed: int = 0, size: str | WorldSize = "tiny", annotator_noise: float = 0.1) -> "World":
        """Build the whole world from ``seed``; ``annotator_noise`` is the simulated
        annotator's label noise for the offline preference pairs."""
        spec = resolve_size(size)
        rng = seeded(seed)
        universe = generate_universe(rng("universe"), spec.n_people, spec.n_towns)
        facts, commonsense = world_facts(universe), commonsense_facts()
        myths = world_myths(universe)
        rng("myths").shuffle(myths)
        n_eval_myths = round(len(myths) * spec.myth_eval_fraction)
        eval_myths, train_myths = myths[:n_eval_myths], myths[n_eval_myths:]

        corpus_ctx = CorpusContext(universe, facts, commonsense, myths)
        task_ctx = TaskContext(universe, facts, commonsense, train_myths, universe.pools())
        corpus = generate_corpus(corpus_ctx, spec.corpus_chars, rng)

        makers = {
            "helpful": (spec.n_helpful, lambda r: helpful_item(task_ctx, r)),
            "adversarial": (spec.n_adversarial, lambda r: adversarial_item(task_ctx, r)),
            "borderline": (spec.n_borderline, lambda r: borderline_item(task_ctx, r)),
        }
        prompts = {}
        for kind, (n, make) in makers.items():
            records = unique_records(make, n, rng(f"prompts/{kind}"))
            prompts[kind] = assign_ids_and_split(records, kind, spec.eval_fraction)
        held_out = {prompt_key(r) for records in prompts.values() for r in records if r["split"] == "eval"}
        sft = build_sft(task_ctx, rng("sft"), spec.n_sft, held_out)

        gatt_records = unique_records(lambda r: gatt_item(task_ctx, r, spec.gatt_turns), spec.n_gatt, rng("gatt"))
        gatt = assign_ids_and_split(gatt_records, "gatt", spec.eval_fraction)
        evals = build_evals(task_ctx, corpus_ctx, eval_myths, spec.n_eval, rng)
        world = cls(seed, spec.name, universe, corpus, sft, prompts, gatt, distillation_data(), evals,
                    annotator_noise=annotator_noise)
        world.preferences = offline_preferences(world, spec.n_preferences, Annotator(noise=annotator_noise, seed=seed))
        return world

    @classmethod
    def load(cls, path) -> "World":
        from llamaforge.world.io import load_world

        return load_world(path)

    def write(self, out_dir) -> None:
        from llamaforge.world.io import write_world

        write_world(self, out_dir)

    def pretraining_documents(self, shuffle: bool = True) -> Iterator[str]:
        """All corpus documents; shuffled (seeded) so the categories are interleaved."""
        docs = [d.text for d in self.corpus]
        if shuffle:
            seeded(self.seed)("pretraining-order").shuffle(docs)
        yield from docs

    def prompt_records(self, kind: str | None = None, split: str | None = None) -> list[dict]:
        """Prompt records of one kind (or all kinds) and one split (or both)."""
        kinds = [kind] if kind else list(self.prompts)
        unknown = [k for k in kinds if k not in self.prompts]
        if unknown:
            raise KeyError(f"no prompt set {unknown[0]!r}; this world has {', '.join(self.prompts)}")
        return [r for k in kinds for r in self.prompts[k] if split is None or r.get("split") == split]


def offline_preferences(world: World, n: int, annotator: Annotator) -> dict[str, list[dict]]:
    """Bootstrap preference pairs before any model exists: two of a record's typical
    responses (gold, wrong, list-all, false refusal, unsafe, ...) annotated by the
    simulated annotator, each closed with the SFT annotators' pleasantry at their rate
    (``CLOSING_SHARE``), and ``STYLE_PAIR_SHARE`` of the helpful pairs the gold answer
    against its closed twin. Separate helpfulness and safety collections, as in SPEC §7;
    later RLHF rounds collect pairs from model samples with ``collect_preferences``."""
    rng = seeded(world.seed)("preferences")
    helpful_pool = world.prompt_records("helpful", "train") + world.prompt_records("borderline", "train")
    safety_pool = world.prompt_records("adversarial", "train")
    out = {}
    for name, pool in (("helpful", helpful_pool), ("safety", safety_pool)):
        if not pool:
            out[name] = []
            continue

        def sample(record: dict) -> tuple[str, str]:
            other = rng.choice(pool)["answer"]
            candidates = candidate_responses(record, rng, other)
            if takes_closing(record) and rng.random() < STYLE_PAIR_SHARE:
                return record["answer"], with_closing(record["answer"])
            a, b = rng.sample(candidates, 2)
            return written(record, a[1]), written(record, b[1])

        def written(record: dict, response: str) -> str:
            # Responses carry the SFT annotators' closing as often as their demonstrations do,
            # right or wrong, safe or not: the habit says nothing about the content. (On
            # safety prompts too: when only safe answers ever carried it, the safety RM
            # learned that the closing makes a reply safe, and PPO put it everywhere.) Not
            # where it breaks the answer, nor after a reply in Veltan.
            if closing_breaks(record) or detect_language(response) == "veltan":
                return response
            return with_closing(response) if rng.random() < CLOSING_SHARE else response

        records = [rng.choice(pool) for _ in range(n)]
        out[name] = collect_preferences(records, sample, annotator)
    return out
