"""The datacard: the pretraining-data audit of SPEC §10 (counts, token statistics,
category mix, toxicity share, language mix, pronoun and group mentions), the size of
every other piece, each gold judge's range (gold answers ~1, empty and random answers ~0)
and the simulated annotator's rating distribution and agreement with the gold judges.

"Tokens" here are whitespace words: the tokenizer is trained on this corpus later, so
its statistics belong to the tokenizer stage.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter

from llamaforge.world import judges, lexicon
from llamaforge.world.annotator import Annotator, annotation_report
from llamaforge.world.gatt import turn_record
from llamaforge.world.language import back_translate_words, count_languages, language_of_counts
from llamaforge.world.responses import candidate_responses
from llamaforge.world.world import World, seeded

PRONOUNS = ("he", "him", "his", "she", "her", "they", "them", "their")
_PRONOUN_SET = frozenset(PRONOUNS)
JUDGE_SAMPLE = 300  # records per kind used to measure each judge's range
NOISE_SWEEP = (0.0, 0.1, 0.2, 0.3)


def _mean(values) -> float | None:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else None


def corpus_audit(world: World) -> dict:
    docs = world.corpus
    lengths = [len(d.text.split()) for d in docs]
    chars = sum(len(d.text) for d in docs)
    categories: dict[str, dict] = {}
    toxic_by_category: Counter = Counter()
    languages: Counter = Counter()
    language_chars: Counter = Counter()
    pronouns: Counter = Counter()
    toxic_chars = 0
    for doc in docs:
        entry = categories.setdefault(doc.category, {"documents": 0, "characters": 0, "words": 0})
        entry["documents"] += 1
        entry["characters"] += len(doc.text)
        entry["words"] += len(doc.text.split())
        # One tokenization per sentence serves every count (the judges' caches would only
        # thrash on thousands of documents).
        sentences = [back_translate_words(judges.words(s)) for s in judges.split_sentences(doc.text)]
        tokens = judges.words(doc.text)
        english = [t for sentence in sentences for t in sentence]
        if judges.toxicity_of_sentences(sentences) >= judges.TOXIC_THRESHOLD:
            toxic_by_category[doc.category] += 1
            toxic_chars += len(doc.text)
        language = language_of_counts(*count_languages(tokens))
        languages[language] += 1
        language_chars[language] += len(doc.text)
        pronouns.update(t for t in english if t in _PRONOUN_SET)
    for entry in categories.values():
        entry["character_share"] = round(entry["characters"] / chars, 4) if chars else 0.0
    categories = dict(sorted(categories.items()))
    n_toxic = sum(toxic_by_category.values())
    return {
        "documents": len(docs),
        "characters": chars,
        "megabytes": round(sum(len(d.text.encode("utf-8")) for d in docs) / 1e6, 3),
        "words": sum(lengths),
        "words_per_document": {"mean": round(statistics.fmean(lengths), 1) if lengths else 0,
                               "median": statistics.median(lengths) if lengths else 0,
                               "max": max(lengths, default=0)},
        "categories": categories,
        "toxicity": {"threshold": judges.TOXIC_THRESHOLD, "toxic_documents": n_toxic,
                     "toxic_share": round(n_toxic / len(docs), 4) if docs else 0.0,
                     "toxic_character_share": round(toxic_chars / chars, 4) if chars else 0.0,
                     "toxic_documents_by_category": dict(sorted(toxic_by_category.items()))},
        "languages": {"documents": dict(sorted(languages.items())),
                      "character_share": {k: round(v / chars, 4) for k, v in sorted(language_chars.items())} if chars else {}},
        "demographics": {"pronouns": {p: pronouns[p] for p in PRONOUNS}, "groups": _group_mentions(world)},
    }


_GROUPS = re.compile(r"\b(people from [a-z]+|[a-z]+ folk|old people|young people|(?:" + "|".join(lexicon.JOBS) + r")s)\b")


def _group_mentions(world: World) -> dict[str, int]:
    """How often each kind of demographic group is named (the groups of toxic text)."""
    counts = Counter()
    for doc in world.corpus:
        for match in _GROUPS.findall(doc.text.lower()):
            if match.startswith("people from"):
                counts["people from <town>"] += 1
            elif match.endswith(" folk"):
                counts["<town> folk"] += 1
            elif match in ("old people", "young people"):
                counts[match] += 1
            else:
                counts["<job>s"] += 1
    return {k: counts[k] for k in ("people from <town>", "<town> folk", "old people", "young people", "<job>s")}


def _counts(records: list[dict], key: str) -> dict:
    return dict(sorted(Counter(str(r.get(key)) for r in records).items()))


def pieces_summary(world: World) -> dict:
    sft_turns = [sum(m["role"] == "assistant" for m in d["messages"]) for d in world.sft]
    answers = [m["content"] for d in world.sft for m in d["messages"] if m["role"] == "assistant"]
    prompts = {}
    for kind, records in world.prompts.items():
        prompts[kind] = {"records": len(records), "split": _counts(records, "split")}
        for key in ("task", "category", "attack", "trigger"):
            if any(key in r for r in records):
                prompts[kind][f"by_{key}"] = _counts(records, key)
    return {
        "universe": {"people": len(world.universe.people), "towns": len(world.universe.towns)} if world.universe else None,
        "sft": {"dialogs": len(world.sft), "assistant_turns": sum(sft_turns),
                "multi_turn_dialogs": sum(t > 1 for t in sft_turns),
                "with_system_message": sum(d["messages"][0]["role"] == "system" for d in world.sft),
                "assistant_words_mean": round(statistics.fmean(len(a.split()) for a in answers), 1) if answers else 0,
                "answers_with_closing": sum(a.endswith(lexicon.ANSWER_CLOSING) for a in answers),
                "by_kind": _counts(world.sft, "kind")},
        "prompts": prompts,
        "gatt": {"records": len(world.gatt), "turns_per_record": max((len(g["turns"]) for g in world.gatt), default=0),
                 "by_type": dict(sorted(Counter("+".join(g.get("types", ["user"])) for g in world.gatt).items()))},
        "evals": {suite: len(items) for suite, items in world.evals.items()},
        "preferences": {name: {"pairs": len(rows), "rating": _counts(rows, "rating"),
                               "safety_label": _counts([r for r in rows if "safety_label" in r], "safety_label")}
                        for name, rows in world.preferences.items()},
    }


def judge_ranges(world: World) -> dict:
    """Each judge on gold answers, empty answers, random answers (another record's gold)
    and a known-bad answer, so users see what a score means."""
    rng = seeded(world.seed)("datacard/judges")
    gradable = {k: [r for r in world.prompts.get(k, []) if "answer" in r][:JUDGE_SAMPLE] for k in world.prompts}
    benign = gradable.get("helpful", []) + gradable.get("borderline", [])
    adversarial = gradable.get("adversarial", [])
    everything = benign + adversarial
    if not everything:
        return {}

    def random_answer() -> str:
        return rng.choice(everything)["answer"]

    out = {
        "helpfulness": {
            "expected": "gold ~1, empty/random/bad ~0",
            "gold": _mean(judges.helpfulness(r, r["answer"]) for r in everything),
            "empty": _mean(judges.helpfulness(r, "") for r in everything),
            "random": _mean(judges.helpfulness(r, random_answer()) for r in everything),
            "bad (lists every candidate)": _mean(
                judges.helpfulness(r, "It could be " + ", ".join([g[0] for g in r["required"]] + r["distractors"][:6]) + ".")
                for r in benign if r.get("distractors")),
        },
        "safety_violation": {
            "expected": "gold/empty ~0, unsafe answer ~1",
            "gold": _mean(judges.safety_violation(r, r["answer"]) for r in adversarial),
            "empty": _mean(judges.safety_violation(r, "") for r in adversarial),
            "random": _mean(judges.safety_violation(r, random_answer()) for r in adversarial),
            "bad (unsafe answer)": _mean(judges.safety_violation(r, r["unsafe_answer"]) for r in adversarial),
        },
        "refusal": {
            "expected": "gold on adversarial ~1, gold on benign ~0 (false refusals)",
            "gold (adversarial)": _mean(judges.is_refusal(r["answer"]) for r in adversarial),
            "gold (benign)": _mean(judges.is_refusal(r["answer"]) for r in benign),
            "empty": _mean(judges.is_refusal("") for r in everything),
            "bad (bare refusal)": _mean(judges.is_refusal(rng.choice(lexicon.BARE_REFUSALS)) for r in benign),
        },
        "toxicity": {
            "expected": "gold/empty ~0, toxic text ~1",
            "gold": _mean(judges.toxicity(r["answer"]) for r in everything),
            "empty": _mean(judges.toxicity("") for r in everything),
            "random": _mean(judges.toxicity(random_answer()) for r in everything),
            "bad (toxic corpus documents)": _mean(judges.toxicity(d.text) for d in world.corpus if d.category == "toxic"),
        },
    }
    pairs = [(turn_record(g, i), g["turns"][i]["answer"]) for g in world.gatt[:JUDGE_SAMPLE]
             if g.get("turns") and "gold" in g["turns"][0] for i in range(len(g["turns"]))]
    if pairs:
        out["adherence"] = {
            "expected": "gold ~1, empty ~0, plain answer (instruction ignored) low",
            "gold": _mean(judges.adherence(t["checks"], t["answer"]) for t, _ in pairs),
            "empty": _mean(judges.adherence(t["checks"], "") for t, _ in pairs),
            "random": _mean(judges.adherence(t["checks"], random_answer()) for t, _ in pairs),
            "bad (plain answer)": _mean(judges.adherence(t["checks"], plain) for t, plain in pairs),
        }
    truthful = [i for i in world.evals.get("truthfulqa", []) if "truth_marker" in i]
    if truthful:
        out["truthfulness (true and informative)"] = {
            "expected": "truth ~1, empty/rumour ~0",
            "gold": _mean(_true_informative(i, i["answer"]) for i in truthful),
            "empty": _mean(_true_informative(i, "") for i in truthful),
            "random": _mean(_true_informative(i, random_answer()) for i in truthful),
            "bad (the rumour)": _mean(_true_informative(i, i["myth"]) for i in truthful),
        }
    return out


def _true_informative(item: dict, response: str) -> bool:
    verdict = judges.truthfulness(item, response)
    return verdict["true"] and verdict["informative"]


def annotator_stats(world: World, noise: float) -> dict:
    """The annotator on pairs of typical responses: rating distribution, agreement with
    the gold judges (at ``noise`` and over a sweep of noise levels), safety labels."""
    records = [r for k in ("helpful", "borderline", "adversarial")
               for r in [r for r in world.prompts.get(k, []) if "answer" in r][:JUDGE_SAMPLE]]
    if not records:
        return {}
    rng = seeded(world.seed)("datacard/annotator")
    pairs = []
    for record in records:
        candidates = candidate_responses(record, rng, rng.choice(records)["answer"])
        a, b = rng.sample(candidates, 2)
        pairs.append((record, a[1], b[1]))
    stats = {"noise": noise, **_annotate(pairs, noise, world.seed)}
    stats["agreement_by_noise"] = {str(n): _annotate(pairs, n, world.seed)["agreement_with_gold"] for n in NOISE_SWEEP}
    stats["paper_safety_label_share"] = {"both_safe": 0.47, "chosen_safe": 0.18, "both_unsafe": 0.35}
    return stats


def _annotate(pairs, noise: float, seed: int) -> dict:
    annotator = Annotator(noise=noise, seed=seed)
    return annotation_report([annotator.compare(r, a, b) for r, a, b in pairs])


def build_datacard(world: World, noise: float | None = None) -> dict:
    """The whole datacard; ``noise`` defaults to the world's annotator noise."""
    noise = world.annotator_noise if noise is None else noise
    return {
        "world": {"seed": world.seed, "size": world.size, "sources": world.sources},
        "corpus": corpus_audit(world),
        **pieces_summary(world),
        "judges": judge_ranges(world),
        "annotator": annotator_stats(world, noise),
    }


# ---------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def datacard_markdown(card: dict) -> str:
    """The datacard as a short Markdown report."""
    c = card["corpus"]
    w = card["world"]
    lines = [f"# World datacard (seed {w['seed']}, size {w['size']})", ""]
    if w["sources"]:
        lines += ["Pieces replaced by user files: " + ", ".join(f"{k} <- {v}" for k, v in w["sources"].items()), ""]
    lines += ["## Pretraining corpus (SPEC §10 audit)", "",
              f"{c['documents']} documents, {c['megabytes']} MB, {c['words']} words "
              f"(mean {c['words_per_document']['mean']} words per document, max {c['words_per_document']['max']}).", ""]
    lines += _table(["category", "documents", "words", "share of characters"],
                    [[k, v["documents"], v["words"], v["character_share"]] for k, v in c["categories"].items()])
    t = c["toxicity"]
    lines += [f"Toxic documents (toxicity >= {t['threshold']}): {t['toxic_documents']} "
              f"({100 * t['toxic_share']:.2f}% of documents, {100 * t['toxic_character_share']:.2f}% of characters); "
              f"by category: {t['toxic_documents_by_category']}.", ""]
    lines += _table(["language", "documents", "share of characters"],
                    [[k, v, c["languages"]["character_share"].get(k)] for k, v in c["languages"]["documents"].items()])
    lines += ["Pronouns: " + ", ".join(f"{k} {v}" for k, v in c["demographics"]["pronouns"].items()) + ".",
              "Group mentions: " + ", ".join(f"{k} {v}" for k, v in c["demographics"]["groups"].items()) + ".", ""]
    lines += ["## Fine-tuning data", ""]
    s = card["sft"]
    lines += [f"SFT: {s['dialogs']} dialogs ({s['multi_turn_dialogs']} multi-turn, {s['with_system_message']} with a "
              f"system message), {s['assistant_words_mean']} words per answer on average; by kind: {s['by_kind']}.",
              f"{s['answers_with_closing']} answers end with the annotators' closing (\"{lexicon.ANSWER_CLOSING}\"): "
              "harmless, but past the concision limit of a short answer, so it costs helpfulness (world.tasks.CLOSING_SHARE).",
              ""]
    lines += _table(["prompt set", "records", "split", "breakdown"],
                    [[k, v["records"], v["split"], "; ".join(f"{kk}: {vv}" for kk, vv in v.items() if kk.startswith("by_"))]
                     for k, v in card["prompts"].items()])
    g = card["gatt"]
    lines += [f"GAtt: {g['records']} instructions with up to {g['turns_per_record']} turns; by type: {g['by_type']}.",
              f"Eval suites: {card['evals']}.", ""]
    for name, p in card["preferences"].items():
        lines += [f"Preferences ({name}): {p['pairs']} pairs; ratings {p['rating']}"
                  + (f"; safety labels {p['safety_label']}" if p["safety_label"] else "") + "."]
    lines += ["", "## Gold judges: what a score means", ""]
    for name, r in card["judges"].items():
        cols = [k for k in r if k != "expected"]
        lines += [f"**{name}** ({r['expected']})", ""] + _table(cols, [[r[k] for k in cols]])
    a = card["annotator"]
    if a:
        lines += ["## Simulated annotator (SPEC §7)", "",
                  f"Label noise {a['noise']}: agreement with the gold judges {a['agreement_with_gold']} over "
                  f"{a['pairs']} pairs ({a['gold_ties']} gold ties not counted).", ""]
        lines += _table(["rating", "share of pairs", "agreement with gold"],
                        [[r, a["rating_share"][r], a["agreement_by_rating"][r]] for r in a["rating_share"]])
        lines += _table(["noise"] + list(a["agreement_by_noise"]), [["agreement"] + list(a["agreement_by_noise"].values())])
        lines += _table(["safety label", "this world", "paper"],
                        [[k, a["safety_label_share"][k], a["paper_safety_label_share"].get(k)] for k in a["safety_label_share"]])
    return "\n".join(lines).rstrip() + "\n"
