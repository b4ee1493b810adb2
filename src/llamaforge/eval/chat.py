"""Chat-model evaluation with the built-in world's gold judges (SPEC §10-11).

One call samples a reply to every prompt record (through `chat_format`, like the chat and the
server) and scores it by the record's kind:

- helpful prompts: gold helpfulness in [0, 1];
- adversarial prompts: violation (0/1), also per risk category;
- borderline prompts: false refusal (0/1);
- prompts with a gold answer (not adversarial): whether the reply is fully right, whatever its
  form, length or instruction (`correct`, 0/1: `judges.correctness` is 1: every part of the
  answer stated, no other candidate named, no stray number in a numeric answer), so a gain in
  helpfulness shows whether it came from the facts or from the form;
- every reply: whether it ended with EOS and parsed (`parsed`).

Any judge can replace the gold one (`judge=`, `violation=`, `false_refusal=`, `correctness=`:
None where a record has no answer to check), so the same evaluation runs on a user's own
prompts with a user's own scorer.

    from llamaforge.eval.chat import chat_eval, paired_difference
    before = chat_eval(sft_model, tok, world.prompt_records(split="eval"))
    after = chat_eval(ppo_model, tok, world.prompt_records(split="eval"))
    paired_difference(before, after, "helpfulness")   # mean gain with a 95% bootstrap interval
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from ..generate import SamplingParams, chat_replies
from ..world import judges
from .harness import bootstrap_interval

Judge = Callable[[dict, str], float]
SCORES = ("helpfulness", "correct", "violation", "false_refusal", "parsed", "words")  # per-item scores summarised


def record_dialog(record: dict, system: str | None = None) -> list[dict]:
    """The dialog a prompt record asks: its `messages`, or one user turn with its `prompt`."""
    dialog = [dict(m) for m in record["messages"]] if "messages" in record else [{"role": "user", "content": record["prompt"]}]
    if system and dialog[0]["role"] != "system":
        dialog.insert(0, {"role": "system", "content": system})
    return dialog


def chat_eval(
    model,
    tokenizer,
    records: Sequence[dict],
    *,
    params: SamplingParams | None = None,
    batch_size: int = 32,
    system: str | None = None,
    judge: Judge = judges.helpfulness,
    violation: Judge = judges.safety_violation,
    false_refusal: Judge = judges.is_false_refusal,
    correctness: Callable[[dict, str], float | None] = judges.correctness,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample (greedy unless `params` says otherwise) and score each record; see the module doc.

    Returns {"metrics": {name: mean}, "intervals": {name: (lo, hi)}, "n": {name: count},
    "per_item": [{"id", "kind", "response", scores...}]}. Metrics with no records are absent.
    """
    # Room for the world's longest answers: a reply cut by the limit counts as not parsed.
    params = params or SamplingParams(max_new_tokens=160)
    records = list(records)
    completions = chat_replies(
        model, tokenizer, [record_dialog(r, system) for r in records], params, batch_size=batch_size, progress=progress
    )
    per_item = []
    for record, completion in zip(records, completions):
        text = completion.text or ""
        item: dict[str, Any] = {"id": record.get("id"), "kind": record.get("kind"), "response": text,
                                "parsed": float(completion.finish_reason == "stop")}
        kind = record.get("kind")
        if kind == "adversarial":
            item["violation"] = float(violation(record, text))
            item["category"] = record.get("category", "unknown")
        elif kind == "borderline":
            item["false_refusal"] = float(false_refusal(record, text))
        if kind != "adversarial":
            item["helpfulness"] = float(judge(record, text))
            item["words"] = float(len(text.split()))  # answer length: what RLHF's selection trims
            share = correctness(record, text)
            if share is not None:
                item["correct"] = float(share >= 1.0)
        per_item.append(item)
    return summarize(per_item)


def summarize(per_item: list[dict]) -> dict[str, Any]:
    """Means and 95% bootstrap intervals of every score in `per_item`, plus violation per category."""
    columns: dict[str, list[float]] = defaultdict(list)
    for item in per_item:
        for name in SCORES:
            if name in item:
                columns[name].append(item[name])
        if "violation" in item:
            columns[f"violation/{item['category']}"].append(item["violation"])
    return {
        "metrics": {name: sum(values) / len(values) for name, values in columns.items()},
        "intervals": {name: bootstrap_interval(values) for name, values in columns.items()},
        "n": {name: len(values) for name, values in columns.items()},
        "per_item": per_item,
    }


def paired_difference(before: dict, after: dict, metric: str) -> dict[str, float]:
    """Mean of `after - before` over the items both scored on `metric`, with a 95% bootstrap
    interval (items paired by id, so prompt difficulty cancels)."""
    earlier = {item["id"]: item[metric] for item in before["per_item"] if metric in item}
    diffs = [item[metric] - earlier[item["id"]] for item in after["per_item"] if metric in item and item["id"] in earlier]
    if not diffs:
        raise ValueError(f"no items scored on {metric!r} in both evaluations")
    lo, hi = bootstrap_interval(diffs)
    return {"diff": sum(diffs) / len(diffs), "lo": lo, "hi": hi, "n": len(diffs)}
