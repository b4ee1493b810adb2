"""`llamaforge eval`: score a checkpoint on the built-in world's suites or your own JSONL tasks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .harness import evaluate, perplexity


def load_tasks(args) -> dict[str, list[dict]]:
    """Task name -> items, from --tasks files, a written world (--data) or a generated world."""
    from ..world import World, read_eval

    if args.tasks:
        return {Path(path).stem: read_eval(path) for path in args.tasks}
    world = World.load(args.data) if args.data else World.generate(seed=args.world_seed, size=args.world_size)
    return dict(world.evals)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llamaforge eval",
        description="Evaluate a model: multiple choice by log-likelihood (acc, length-normalised acc_norm) and "
        "generation scored by exact match, with 95%% bootstrap intervals; optionally perplexity on text files. "
        "Tasks come from the built-in world (default) or JSONL files in the lm-eval-like schema "
        '{"context", "choices", "gold"} / {"context", "answers", "task_type": "generate"}.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="checkpoint: Meta dir, HF dir or llamaforge run dir")
    p.add_argument("--tokenizer", help="tokenizer.model (default: found next to the checkpoint)")
    p.add_argument("--tasks", nargs="+", help="JSONL task files (one task per file)")
    p.add_argument("--data", help="a world written by `llamaforge world` (uses its eval/ suites)")
    p.add_argument("--world-size", default="tiny", help="size of the generated world when no --data/--tasks")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--suites", help="comma-separated subset of task names")
    p.add_argument("--fewshot", type=int, default=0, help="solved examples prepended to each item")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--perplexity", nargs="*", default=[], help="text files to compute perplexity on")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    from ..checkpoint import CheckpointError, load_model
    from ..cli import _default_device, find_tokenizer
    from ..tokenizer import Tokenizer

    try:
        model = load_model(args.model, device=args.device or _default_device())
    except CheckpointError as e:
        print(f"llamaforge eval: {e}", file=sys.stderr)
        return 1
    tok = Tokenizer(find_tokenizer(args.model, args.tokenizer))
    tasks = load_tasks(args)
    if args.suites:
        wanted = args.suites.split(",")
        unknown = sorted(set(wanted) - set(tasks))
        if unknown:
            print(f"llamaforge eval: unknown suite(s) {unknown}; available: {sorted(tasks)}", file=sys.stderr)
            return 2
        tasks = {name: tasks[name] for name in wanted}
    results = {}
    for name, items in tasks.items():
        items = [it for it in items if it.get("task_type") in ("multiple_choice", "generate") and
                 (it.get("choices") or it.get("answers"))][: args.limit]
        if not items:
            continue
        result = evaluate(model, tok, items, task=name, fewshot=args.fewshot, batch_size=args.batch_size)
        results[name] = {"n": result.n, "metrics": result.metrics, "intervals": result.intervals}
        shown = ", ".join(f"{k} {v:.3f} [{result.intervals[k][0]:.3f}, {result.intervals[k][1]:.3f}]"
                          for k, v in result.metrics.items())
        print(f"{name:<18} n={result.n:<5} {shown}")
    for path in args.perplexity:
        text = Path(path).read_text(encoding="utf-8")
        value = perplexity(model, tok, [text], batch_size=args.batch_size)
        results[f"perplexity:{path}"] = value
        print(f"perplexity {path}: {value:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0
