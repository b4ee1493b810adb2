"""A simulated human annotator for preference data (SPEC §7).

Given a prompt record and two responses it picks one with the gold judges and rates how
much better it is: significantly, better, slightly or negligibly better. With
``noise > 0`` it makes mistakes like people do: it flips its choice with probability
``noise`` and shifts its rating by one step with probability ``noise``. On safety
(adversarial) prompts it also labels the pair: both safe, chosen safe and the other
unsafe, or both unsafe; a pair whose chosen answer is unsafe while the other is safe is
marked ``excluded``, as the paper excludes those.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

from llamaforge.world.judges import gold_reward, is_safety_prompt, safety_violation

# SPEC §7, from most to least separable.
RATINGS = ("significantly better", "better", "slightly better", "negligibly better")
SAFETY_LABELS = ("both_safe", "chosen_safe", "both_unsafe")
# Gold-reward gaps (reward in [0, 1]) at which a rating is earned: >= 0.6 is
# "significantly better", >= 0.3 "better", >= 0.1 "slightly better", else "negligibly".
RATING_THRESHOLDS = (0.6, 0.3, 0.1)


def rating_for_gap(gap: float) -> str:
    for threshold, rating in zip(RATING_THRESHOLDS, RATINGS):
        if gap >= threshold:
            return rating
    return RATINGS[-1]


@dataclass
class Annotator:
    noise: float = 0.1
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"annotator noise must be in [0, 0.5] (0.5 is a coin flip), got {self.noise}")
        self._rng = random.Random(f"annotator/{self.seed}")

    def compare(self, record: dict, response_a: str, response_b: str) -> dict:
        """Pick the better response and rate it. Returns ``chosen``, ``rejected``,
        ``rating``, ``safety_label`` (None outside safety prompts), ``excluded``, and the
        gold view: ``gold_gap`` (gold reward of chosen minus rejected) and
        ``agrees_with_gold`` (None when gold sees a tie)."""
        rng = self._rng
        score_a, score_b = gold_reward(record, response_a), gold_reward(record, response_b)
        a_wins = score_a > score_b if score_a != score_b else rng.random() < 0.5
        if rng.random() < self.noise:
            a_wins = not a_wins
        chosen, rejected = (response_a, response_b) if a_wins else (response_b, response_a)
        gap = (score_a - score_b) if a_wins else (score_b - score_a)
        level = RATINGS.index(rating_for_gap(abs(gap)))
        if rng.random() < self.noise:
            level = min(len(RATINGS) - 1, max(0, level + rng.choice((-1, 1))))
        safety_label, excluded = None, False
        if is_safety_prompt(record):
            chosen_safe = not safety_violation(record, chosen)
            rejected_safe = not safety_violation(record, rejected)
            if chosen_safe and rejected_safe:
                safety_label = "both_safe"
            elif chosen_safe:
                safety_label = "chosen_safe"
            elif not rejected_safe:
                safety_label = "both_unsafe"
            else:
                safety_label, excluded = "chosen_unsafe", True  # SPEC §7: such pairs are excluded
        return {
            "chosen": chosen, "rejected": rejected, "rating": RATINGS[level], "safety_label": safety_label,
            "excluded": excluded, "gold_gap": round(gap, 4), "agrees_with_gold": None if score_a == score_b else gap > 0,
        }


def preference_row(record: dict, comparison: dict) -> dict:
    """A ``prompt/chosen/rejected/rating`` row (the preference JSONL format)."""
    row = {"id": record.get("id", ""), "kind": record.get("kind", "helpful")}
    if "messages" in record:
        row["messages"] = record["messages"]
    else:
        row["prompt"] = record["prompt"]
    row.update(chosen=comparison["chosen"], rejected=comparison["rejected"], rating=comparison["rating"])
    if comparison["safety_label"] is not None:
        row["safety_label"] = comparison["safety_label"]
    return row


def collect_preferences(records: Iterable[dict], sample: Callable[[dict], tuple[str, str]],
                        annotator: Annotator) -> list[dict]:
    """The paper's collection loop (SPEC §7): for each prompt, sample two responses (from
    the current model(s), at different temperatures or variants — ``sample`` decides) and
    annotate them. Excluded safety pairs are dropped; identical responses are skipped."""
    rows = []
    for record in records:
        response_a, response_b = sample(record)
        if response_a == response_b:
            continue
        comparison = annotator.compare(record, response_a, response_b)
        if not comparison["excluded"]:
            rows.append(preference_row(record, comparison))
    return rows


def annotation_report(comparisons: list[dict]) -> dict:
    """Rating distribution, agreement with the gold judges and safety-label mix."""
    decided = [c for c in comparisons if c["agrees_with_gold"] is not None]
    ratings = Counter(c["rating"] for c in comparisons)
    labels = Counter(c["safety_label"] for c in comparisons if c["safety_label"] is not None)
    by_rating = {}
    for rating in RATINGS:
        group = [c for c in decided if c["rating"] == rating]
        by_rating[rating] = round(sum(c["agrees_with_gold"] for c in group) / len(group), 4) if group else None
    n_labels = sum(labels.values())
    return {
        "pairs": len(comparisons),
        "rating_share": {r: round(ratings[r] / len(comparisons), 4) if comparisons else 0.0 for r in RATINGS},
        "agreement_with_gold": round(sum(c["agrees_with_gold"] for c in decided) / len(decided), 4) if decided else None,
        "agreement_by_rating": by_rating,
        "gold_ties": len(comparisons) - len(decided),
        "safety_label_share": {k: round(labels[k] / n_labels, 4) if n_labels else 0.0
                               for k in SAFETY_LABELS + ("chosen_unsafe",)},
    }
