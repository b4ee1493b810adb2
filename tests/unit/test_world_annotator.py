"""The simulated annotator: agrees with the gold judges at noise 0, disagrees about as
often as configured, rates by the size of the gap, labels safety pairs as in SPEC §7."""

import random

import pytest

from llamaforge.world import judges
from llamaforge.world.annotator import RATINGS, Annotator, annotation_report, collect_preferences, rating_for_gap
from llamaforge.world.responses import candidate_responses
from llamaforge.world.world import World


@pytest.fixture(scope="module")
def world():
    return World.generate(seed=3, size="tiny")


def _pairs(world, n, seed=0):
    rng = random.Random(seed)
    records = world.prompt_records()
    pairs = []
    while len(pairs) < n:
        record = rng.choice(records)
        a, b = rng.sample(candidate_responses(record, rng, rng.choice(records)["answer"]), 2)
        pairs.append((record, a[1], b[1]))
    return pairs


def test_noise_free_annotator_always_agrees_with_gold(world):
    annotator = Annotator(noise=0.0, seed=1)
    for record, a, b in _pairs(world, 400):
        out = annotator.compare(record, a, b)
        gold_chosen, gold_rejected = judges.gold_reward(record, out["chosen"]), judges.gold_reward(record, out["rejected"])
        assert gold_chosen >= gold_rejected
        assert out["agrees_with_gold"] in (True, None)
        assert {out["chosen"], out["rejected"]} == {a, b}
        assert not out["excluded"]  # no label noise, so never an unsafe answer over a safe one


@pytest.mark.parametrize("noise", [0.1, 0.2, 0.3])
def test_label_noise_lowers_agreement_as_configured(world, noise):
    annotator = Annotator(noise=noise, seed=7)
    comparisons = [annotator.compare(r, a, b) for r, a, b in _pairs(world, 3000, seed=2)]
    agreement = annotation_report(comparisons)["agreement_with_gold"]
    assert agreement == pytest.approx(1 - noise, abs=0.04)


def test_ratings_follow_the_gold_gap():
    assert [rating_for_gap(g) for g in (1.0, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05, 0.0)] == [
        "significantly better", "significantly better", "better", "better", "slightly better", "slightly better",
        "negligibly better", "negligibly better"]
    record = {"kind": "helpful", "prompt": "Where does Mira live?", "answer": "Mira lives in Oakford.",
              "required": [["Oakford"]], "distractors": ["Belford"], "subject": "Mira"}
    out = Annotator(noise=0.0).compare(record, "", "Mira lives in Oakford.")
    assert out["chosen"] == "Mira lives in Oakford." and out["rating"] == "significantly better"
    out = Annotator(noise=0.0).compare(record, "Oakford.", "Mira lives in Oakford.")  # equally good
    assert out["rating"] == "negligibly better" and out["agrees_with_gold"] is None


def test_safety_labels_and_exclusion(world):
    record = world.prompt_records("adversarial")[0]
    safe, unsafe = record["answer"], record["unsafe_answer"]
    annotator = Annotator(noise=0.0)
    assert annotator.compare(record, unsafe, safe)["safety_label"] == "chosen_safe"
    assert annotator.compare(record, safe, "I cannot help with that.")["safety_label"] == "both_safe"
    sneaky = "I cannot help with that. But here is how: " + " ".join(record["unsafe_markers"])
    assert annotator.compare(record, unsafe, sneaky)["safety_label"] == "both_unsafe"
    assert Annotator(noise=0.0).compare(world.prompt_records("helpful")[0], "a", "b")["safety_label"] is None

    # With noise the annotator sometimes prefers the unsafe answer: such pairs are excluded.
    noisy = Annotator(noise=0.5, seed=0)
    outs = [noisy.compare(record, unsafe, safe) for _ in range(200)]
    excluded = [o for o in outs if o["excluded"]]
    assert 50 < len(excluded) < 150
    assert all(o["safety_label"] == "chosen_unsafe" and o["chosen"] == unsafe for o in excluded)
    rows = collect_preferences([record] * 200, lambda r: (unsafe, safe), Annotator(noise=0.5, seed=0))
    assert len(rows) == 200 - len(excluded)
    assert all(r["chosen"] == safe and r["safety_label"] == "chosen_safe" for r in rows)


def test_collect_preferences_rows(world):
    records = world.prompt_records("helpful", "train")[:20]
    rows = collect_preferences(records, lambda r: (r["answer"], "I cannot help with that."), Annotator(noise=0.0))
    assert len(rows) == 20
    for record, row in zip(records, rows):
        assert row["chosen"] == record["answer"] and row["rejected"] == "I cannot help with that."
        assert row["rating"] in RATINGS and "safety_label" not in row
        assert ("prompt" in row) != ("messages" in row)
    # Identical samples carry no preference and are skipped.
    assert collect_preferences(records, lambda r: ("same", "same"), Annotator()) == []


def test_annotator_is_deterministic_and_validates_noise(world):
    pairs = _pairs(world, 200)
    run_a, run_b = Annotator(noise=0.2, seed=5), Annotator(noise=0.2, seed=5)
    assert [run_a.compare(*p) for p in pairs] == [run_b.compare(*p) for p in pairs]
    with pytest.raises(ValueError, match="noise must be in"):
        Annotator(noise=0.7)


def test_offline_preferences_of_the_world(world):
    helpful, safety = world.preferences["helpful"], world.preferences["safety"]
    assert helpful and safety
    assert all(r["rating"] in RATINGS for r in helpful + safety)
    assert all(r["safety_label"] in ("both_safe", "chosen_safe", "both_unsafe") for r in safety)
    by_id = {r["id"]: r for r in world.prompt_records()}
    agree = [judges.gold_reward(by_id[r["id"]], r["chosen"]) >= judges.gold_reward(by_id[r["id"]], r["rejected"])
             for r in helpful + safety]
    assert 0.8 < sum(agree) / len(agree) < 0.97  # the default 10% label noise, ties included


def test_contrast_pairs_change_the_gold_answer_in_one_respect():
    import random

    from llamaforge.world import judges
    from llamaforge.world.responses import contrast_pairs
    from llamaforge.world.tasks import with_closing

    records = World.generate(seed=0, size="tiny").prompt_records("helpful", "eval")
    pairs = contrast_pairs(records, random.Random(0))
    assert all(pairs[name] for name in ("wrong fact", "repeated", "closing"))
    for name, items in pairs.items():
        for record, better, worse in items:
            assert better == record["answer"] and judges.helpfulness(record, better) > judges.helpfulness(record, worse)
    for record, better, worse in pairs["wrong fact"]:  # the gold answer but its last short answer
        short = record["short_answer"]
        i = better.rfind(short)
        head, tail = better[:i], better[i + len(short):]
        assert worse.startswith(head) and worse.endswith(tail) and worse != better
        assert short not in worse[len(head): len(worse) - len(tail)] and judges.correctness(record, worse) < 1
    # Only that occurrence changes, and only as a whole word.
    rng = random.Random(0)
    sum_record = {"kind": "helpful", "numeric": True, "short_answer": "42", "answer": "84 - 42 = 42.",
                  "required": [["42"]], "prompt": "What is 84 - 42?"}
    [(_, better, worse)] = contrast_pairs([sum_record], rng)["wrong fact"]
    assert worse.startswith("84 - 42 = ") and worse != better and worse.count("42") == 1
    age_record = {"kind": "helpful", "numeric": True, "short_answer": "4", "answer": "Ana is 4 and Bo is 14.",
                  "required": [["4"]], "prompt": "Ana is 4 and Bo is 14. How old is Ana?"}
    [(_, better, worse)] = contrast_pairs([age_record], rng)["wrong fact"]
    assert worse.endswith(" and Bo is 14.") and not worse.startswith("Ana is 4 ")
    assert all(worse == " ".join([better] * 4) for _, better, worse in pairs["repeated"])
    assert all(worse == with_closing(better) for _, better, worse in pairs["closing"])
