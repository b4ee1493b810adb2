"""Safety evaluations of generations (SPEC §10-11): TruthfulQA-like "true and informative",
ToxiGen-like share of toxic continuations, and (for chat models) violation per risk category and
false refusals through `eval.chat.chat_eval`.

Every score comes from a pluggable scorer; the defaults are the built-in world's gold judges:

- `truthfulness(record, response) -> {"true": bool, "informative": bool}` (`judges.truthfulness`);
- `toxicity(text) -> float in [0, 1]`, toxic at `threshold` and above (`judges.toxicity`).

A base model continues plain text (the item's `context`, stopped at a newline); a chat model
(`chat=True`) answers the item's `prompt` (TruthfulQA) or is asked to continue the list
(ToxiGen) through the chat format, as the paper evaluates Llama 2-Chat.

    from llamaforge.eval.safety import safety_eval
    result = safety_eval(model, tok, world.evals, chat=True, prompts=world.prompt_records(split="eval"))
    result["metrics"]["truthfulqa/true_and_informative"], result["metrics"]["toxigen/toxic"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..world import judges
from .harness import bootstrap_interval, evaluate_generation

Truthfulness = Callable[[dict, str], dict]
Toxicity = Callable[[str], float]


def _chat_prompt(tok, text: str) -> list[int]:
    from ..chat_format import encode_dialog

    return encode_dialog(tok, [{"role": "user", "content": text}])


def _summarize(prefix: str, per_item: list[dict], keys: Sequence[str]) -> dict[str, Any]:
    metrics = {f"{prefix}/{k}": sum(r[k] for r in per_item) / len(per_item) for k in keys}
    intervals = {f"{prefix}/{k}": bootstrap_interval([r[k] for r in per_item]) for k in keys}
    return {"metrics": metrics, "intervals": intervals, "n": {name: len(per_item) for name in metrics},
            "per_item": per_item}


def truthfulqa_eval(
    model, tok, items: Sequence[dict], *, chat: bool = False, truthfulness: Truthfulness = judges.truthfulness,
    max_new_tokens: int = 48, batch_size: int = 16,
) -> dict[str, Any]:
    """Share of answers that are true, informative, and both (the paper's TruthfulQA figure).

    Items need `context` (base models) or `prompt` (chat models) plus whatever `truthfulness`
    reads (the world's items carry `truth_marker` and `myth_marker`).
    """
    items = [it for it in items if it.get("prompt" if chat else "context")]
    if not items:
        raise ValueError("no TruthfulQA items with a " + ("'prompt'" if chat else "'context'"))
    prompt_fn = (lambda item, _context: _chat_prompt(tok, item["prompt"])) if chat else None
    result = evaluate_generation(model, tok, items, task="truthfulqa", max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, judge=lambda item, text: 0.0, prompt_fn=prompt_fn)
    per_item = []
    for item, row in zip(items, result.per_item):
        verdict = truthfulness(item, row["response"])
        true, informative = float(bool(verdict["true"])), float(bool(verdict["informative"]))
        per_item.append({"id": item.get("id"), "response": row["response"], "true": true, "informative": informative,
                         "true_and_informative": true * informative})
    return _summarize("truthfulqa", per_item, ("true", "informative", "true_and_informative"))


def toxigen_eval(
    model, tok, items: Sequence[dict], *, chat: bool = False, toxicity: Toxicity = judges.toxicity,
    threshold: float = judges.TOXIC_THRESHOLD, max_new_tokens: int = 32, batch_size: int = 16,
) -> dict[str, Any]:
    """Share of continuations whose `toxicity` is at least `threshold`, and the mean toxicity.

    Items need a `context` (the world's ToxiGen-like items: statements about a group, toxic or
    benign, ending with "-" for the model to continue); `toxic/<label>` splits by the item's label.
    """
    items = [it for it in items if it.get("context")]
    if not items:
        raise ValueError("no ToxiGen items with a 'context'")
    prompt_fn = (lambda item, context: _chat_prompt(tok, "Continue the list:\n" + context)) if chat else None
    result = evaluate_generation(model, tok, items, task="toxigen", max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, judge=lambda item, text: 0.0, prompt_fn=prompt_fn)
    per_item = []
    for item, row in zip(items, result.per_item):
        score = float(toxicity(row["response"]))
        per_item.append({"id": item.get("id"), "label": item.get("label", "unlabelled"), "response": row["response"],
                         "toxicity": score, "toxic": float(score >= threshold)})
    out = _summarize("toxigen", per_item, ("toxic", "toxicity"))
    for label in sorted({r["label"] for r in per_item}):
        values = [r["toxic"] for r in per_item if r["label"] == label]
        out["metrics"][f"toxigen/toxic/{label}"] = sum(values) / len(values)
        out["intervals"][f"toxigen/toxic/{label}"] = bootstrap_interval(values)
        out["n"][f"toxigen/toxic/{label}"] = len(values)
    return out


def safety_eval(
    model, tok, suites: dict[str, list[dict]], *, chat: bool = False, prompts: Sequence[dict] = (), limit: int | None = None,
    truthfulness: Truthfulness = judges.truthfulness, toxicity: Toxicity = judges.toxicity,
    violation: Callable[[dict, str], float] = judges.safety_violation,
    false_refusal: Callable[[dict, str], float] = judges.is_false_refusal, batch_size: int = 16,
) -> dict[str, Any]:
    """TruthfulQA and ToxiGen from `suites` (when present) and, for chat models given adversarial
    and borderline `prompts`, violation per category and false refusals. Returns one dict of
    `metrics`, `intervals`, `n` with names prefixed by the evaluation (`truthfulqa/...`,
    `toxigen/...`, `violation/...`, `false_refusal`); `limit` caps each suite and each prompt kind."""
    out: dict[str, Any] = {"metrics": {}, "intervals": {}, "n": {}}

    def merge(part: dict) -> None:
        for key in ("metrics", "intervals", "n"):
            out[key].update(part[key])

    if suites.get("truthfulqa"):
        merge(truthfulqa_eval(model, tok, suites["truthfulqa"][:limit], chat=chat, truthfulness=truthfulness,
                              batch_size=batch_size))
    if suites.get("toxigen"):
        merge(toxigen_eval(model, tok, suites["toxigen"][:limit], chat=chat, toxicity=toxicity, batch_size=batch_size))
    safety_prompts = [r for kind in ("adversarial", "borderline") for r in
                      [r for r in prompts if r.get("kind") == kind][:limit]]
    if chat and safety_prompts:
        from .chat import chat_eval

        part = chat_eval(model, tok, safety_prompts, batch_size=batch_size, violation=violation,
                         false_refusal=false_refusal)
        merge(part)
    if not out["metrics"]:
        raise ValueError("nothing to evaluate: no truthfulqa/toxigen suites"
                         + (" and no adversarial/borderline prompts" if chat else " (pass chat=True for prompts)"))
    return out
