"""Evaluation harness: multiple choice by log-likelihood, generation with exact match or a
judge, few-shot prompts, perplexity — batched, on any `Transformer` and `Tokenizer`.

Items follow an lm-eval-like JSONL schema (the built-in world's eval suites use it):
`{"id", "task_type": "multiple_choice"|"generate", "context", "choices", "gold", "answers"}`.
A multiple-choice item is scored as `context + " " + choice`; its accuracy counts the choice
with the highest log-likelihood, `acc_norm` divides each log-likelihood by the choice's
length in characters first (so long choices are not penalised for being long).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..generate import SamplingParams, generate
from ..model import Transformer

FEWSHOT_SEPARATOR = "\n\n"


@dataclass
class TaskResult:
    task: str
    n: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95% bootstrap
    per_item: list[dict] = field(default_factory=list)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def split_context_continuation(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokens of `context + continuation`, split where the context's own tokens end.

    The whole string is encoded once (as the model would see it); the split point comes from
    token boundaries, never from searching strings.
    """
    whole = tok.encode(context + continuation, bos=True, eos=False)
    ctx = tok.encode(context, bos=True, eos=False)
    split = min(common_prefix_length(ctx, whole), len(whole) - 1)
    return whole[:split], whole[split:]


@torch.inference_mode()
def continuation_logprobs(
    model: Transformer, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[tuple[float, bool]]:
    """Sum of log-probs of each continuation given its context, and whether it is the greedy one."""
    device = model.output.weight.device
    out: list[tuple[float, bool]] = []
    max_len = model.args.max_seq_len
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        # Keep the end of over-long inputs: the continuation must stay whole.
        seqs = [(ctx + cont)[-(max_len + 1) :] for ctx, cont in chunk]
        width = max(len(s) for s in seqs) - 1
        inputs = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
        for row, seq in enumerate(seqs):
            inputs[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        logprobs = F.log_softmax(model(inputs).float(), dim=-1)
        for row, (seq, (_, cont)) in enumerate(zip(seqs, chunk)):
            n = len(cont)
            positions = torch.arange(len(seq) - 1 - n, len(seq) - 1, device=device)
            targets = torch.tensor(cont, device=device)
            picked = logprobs[row, positions].gather(-1, targets[:, None]).squeeze(-1)
            greedy = bool((logprobs[row, positions].argmax(-1) == targets).all())
            out.append((float(picked.sum()), greedy))
    return out


def fewshot_context(item: dict, examples: Sequence[dict]) -> str:
    """Prepend solved examples: `context + " " + gold answer`, separated by blank lines."""
    shots = [f"{ex['context']} {gold_text(ex)}" for ex in examples]
    return FEWSHOT_SEPARATOR.join(shots + [item["context"]])


def gold_text(item: dict) -> str:
    if item.get("choices") and item.get("gold") is not None:
        return item["choices"][item["gold"]]
    return item["answers"][0]


def pick_fewshot(items: Sequence[dict], k: int, seed: int) -> Callable[[int], list[dict]]:
    """For item i, k other items of the same task, drawn reproducibly."""

    def choose(i: int) -> list[dict]:
        if k == 0:
            return []
        rng = random.Random(seed * 1_000_003 + i)
        others = [j for j in range(len(items)) if j != i]
        return [items[j] for j in rng.sample(others, min(k, len(others)))]

    return choose


def evaluate_multiple_choice(
    model: Transformer, tok, items: Sequence[dict], *, task: str = "mc", fewshot: int = 0, seed: int = 0,
    batch_size: int = 16,
) -> TaskResult:
    shots = pick_fewshot(items, fewshot, seed)
    pairs, owners = [], []
    for i, item in enumerate(items):
        context = fewshot_context(item, shots(i))
        for choice in item["choices"]:
            pairs.append(split_context_continuation(tok, context, " " + choice))
            owners.append(i)
    scores = continuation_logprobs(model, pairs, batch_size)
    per_item: list[dict] = [{"id": item.get("id"), "logliks": []} for item in items]
    for (loglik, _), i in zip(scores, owners):
        per_item[i]["logliks"].append(loglik)
    for item, row in zip(items, per_item):
        lengths = [max(1, len(c)) for c in item["choices"]]
        row["pred"] = max(range(len(lengths)), key=lambda c: row["logliks"][c])
        row["pred_norm"] = max(range(len(lengths)), key=lambda c: row["logliks"][c] / lengths[c])
        row["acc"] = float(row["pred"] == item["gold"])
        row["acc_norm"] = float(row["pred_norm"] == item["gold"])
    return _result(task, per_item, ["acc", "acc_norm"], seed)


def exact_match(response: str, answers: Iterable[str]) -> float:
    """1.0 when the first line of the response, normalised, equals one of the answers."""
    first = response.strip().split("\n")[0].strip().rstrip(".").strip().lower()
    return float(any(first == a.strip().rstrip(".").strip().lower() for a in answers))


def evaluate_generation(
    model: Transformer, tok, items: Sequence[dict], *, task: str = "gen", fewshot: int = 0, seed: int = 0,
    max_new_tokens: int = 32, batch_size: int = 16, judge: Callable[[dict, str], float] | None = None,
    prompt_fn: Callable[[dict, str], list[int]] | None = None,
) -> TaskResult:
    """Greedy generation, stopped at a newline; scored by exact match, or by `judge(item, text)`.

    `prompt_fn(item, context)` turns the (few-shot) context into tokens; the default is plain
    text with BOS. Chat models pass a function that wraps it with `chat_format`.
    """
    shots = pick_fewshot(items, fewshot, seed)
    prompts = []
    for i, item in enumerate(items):
        context = fewshot_context(item, shots(i))
        prompts.append(prompt_fn(item, context) if prompt_fn else tok.encode(context, bos=True, eos=False))
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_strings=() if prompt_fn else ("\n",))
    per_item = []
    for start in range(0, len(items), batch_size):
        batch = prompts[start : start + batch_size]
        for item, completion in zip(items[start : start + batch_size], generate(model, batch, params, tokenizer=tok)):
            text = completion.text or ""
            score = judge(item, text) if judge else exact_match(text, item["answers"])
            per_item.append({"id": item.get("id"), "response": text, "score": float(score)})
    return _result(task, per_item, ["score"], seed)


def evaluate(model: Transformer, tok, items: Sequence[dict], *, task: str, **kwargs) -> TaskResult:
    """Dispatch on the items' task_type (all items of one task share it)."""
    kinds = {item.get("task_type", "multiple_choice") for item in items}
    if len(kinds) != 1:
        raise ValueError(f"task {task!r} mixes task types {sorted(kinds)}; split it into one task per type")
    if kinds == {"multiple_choice"}:
        kwargs.pop("judge", None)
        kwargs.pop("max_new_tokens", None)
        kwargs.pop("prompt_fn", None)
        return evaluate_multiple_choice(model, tok, items, task=task, **kwargs)
    return evaluate_generation(model, tok, items, task=task, **kwargs)


@torch.inference_mode()
def perplexity(model: Transformer, tok, texts: Iterable[str], *, seq_len: int | None = None, batch_size: int = 8) -> float:
    """Perplexity of texts joined with BOS/EOS and cut into windows of `seq_len` tokens."""
    seq_len = seq_len or model.args.max_seq_len
    stream: list[int] = []
    for text in texts:
        stream += tok.encode(text, bos=True, eos=True)
    windows = [stream[i : i + seq_len + 1] for i in range(0, max(1, len(stream) - 1), seq_len)]
    windows = [w for w in windows if len(w) > 1]
    if not windows:
        raise ValueError("perplexity needs at least two tokens of text")
    device = model.output.weight.device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        width = max(len(w) for w in chunk)
        batch = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        targets = torch.full((len(chunk), width - 1), -100, dtype=torch.long, device=device)
        for row, w in enumerate(chunk):
            batch[row, : len(w)] = torch.tensor(w)
            targets[row, : len(w) - 1] = torch.tensor(w[1:])
        logits = model(batch[:, :-1]).float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((targets != -100).sum())
    return math.exp(total_nll / total_tokens)


def bootstrap_interval(values: Sequence[float], *, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


def _result(task: str, per_item: list[dict], keys: list[str], seed: int) -> TaskResult:
    metrics = {k: sum(r[k] for r in per_item) / max(1, len(per_item)) for k in keys}
    intervals = {k: bootstrap_interval([r[k] for r in per_item], seed=seed) for k in keys}
    return TaskResult(task=task, n=len(per_item), metrics=metrics, intervals=intervals, per_item=per_item)
