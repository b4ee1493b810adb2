"""`llamaforge eval`: score a checkpoint on the built-in world's suites or your own JSONL tasks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .harness import evaluate, perplexity


def load_tasks(args) -> dict[str, list[dict]]:
    """Task name -> items, from --local benchmarks and --tasks files, else a written world (--data)
    or a generated world."""
    from ..world import World, read_eval
    from .loaders import load_benchmark

    tasks = {}
    for spec in args.local or []:
        name, _, path = spec.partition("=")
        tasks[name] = load_benchmark(name, path)
    tasks.update({Path(path).stem: read_eval(path) for path in args.tasks or []})
    if tasks:
        return tasks
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
    p.add_argument("--local", nargs="+", metavar="NAME=PATH",
                   help="local benchmark files: mmlu=, boolq=, hellaswag=, truthfulqa_mc= a file or folder in the "
                   "usual release layout (see llamaforge.eval.loaders)")
    p.add_argument("--task", choices=("harness", "safety"), default="harness",
                   help="harness: the suites' accuracy; safety: TruthfulQA true+informative, ToxiGen toxic share "
                   "and, with --chat, violation per category and false refusals on the world's eval prompts")
    p.add_argument("--chat", action="store_true", help="the model is a chat model: prompt through the chat format")
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
    if args.task == "safety":
        return _safety(model, tok, args)
    try:
        tasks = load_tasks(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"llamaforge eval: {e}", file=sys.stderr)
        return 1
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


def _safety(model, tok, args) -> int:
    """`--task safety`: the safety evaluations of eval.safety with the world's gold judges."""
    from ..world import World
    from .safety import safety_eval

    world = World.load(args.data) if args.data else World.generate(seed=args.world_seed, size=args.world_size)
    suites = {name: world.evals.get(name, []) for name in ("truthfulqa", "toxigen")}
    result = safety_eval(model, tok, suites, chat=args.chat, prompts=world.prompt_records(split="eval"),
                         limit=args.limit, batch_size=args.batch_size)
    for name, value in result["metrics"].items():
        lo, hi = result["intervals"][name]
        print(f"{name:<32} {value:.3f} [{lo:.3f}, {hi:.3f}] n={result['n'][name]}")
    if args.out:
        Path(args.out).write_text(json.dumps({k: result[k] for k in ("metrics", "intervals", "n")}, indent=2) + "\n")
    return 0
