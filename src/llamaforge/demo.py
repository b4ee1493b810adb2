"""`llamaforge demo`: the pipeline end to end on the built-in world, with every stage's effect
measured by the world's own yardsticks.

Today's path: world -> tokenizer -> pretraining -> evaluation -> report. Each stage keeps its
outputs under runs/<name>/, so re-running after an interruption continues where it stopped
(pretraining resumes from its newest checkpoint; finished stages are not redone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Eval suites of the world and how each is scored on a pretrained (not yet chat) model.
DEMO_SUITES = ("world_knowledge", "reading", "commonsense", "math", "truthfulqa")
FEWSHOT = 3


def _pretrain_overrides(name: str, root: str, quick: bool) -> list[str]:
    overrides = [f"run.name={name}", f"run.root={root}"]
    if quick:
        # Small enough for CI (about a minute of training on 2 cores), same code path.
        overrides += ["data.world_size=tiny", "model.preset=tiny", "data.vocab_size=512", "data.seq_len=128",
                      "data.batch_size=16", "data.val_fraction=0.05", "train.max_steps=120", "train.warmup_steps=10", "train.lr=3e-3",
                      "train.eval_every=60", "train.checkpoint_every=60", "data.eval_batches=8"]
    return overrides


def _stage_dir(run_root: Path, stage: str) -> Path | None:
    found = sorted(run_root.glob(f"[0-9][0-9]-{stage}"))
    return found[-1] if found else None


def _evaluate(model_dir: Path, world_dir: Path, limit: int, out: Path) -> dict:
    """World eval suites on the pretrained model and on its untrained twin (same shape, init)."""
    import torch

    from .checkpoint import load_model
    from .eval import evaluate
    from .model import Transformer
    from .tokenizer import Tokenizer
    from .world import World

    if out.exists():
        cached = json.loads(out.read_text())
        if cached.get("model") == str(model_dir):
            return cached
    world = World.load(world_dir)
    tok = Tokenizer(model_dir / "tokenizer.model")
    trained = load_model(model_dir)
    torch.manual_seed(0)
    untrained = Transformer(trained.args).eval()
    results: dict = {"model": str(model_dir), "suites": {}}
    for suite in DEMO_SUITES:
        items = [it for it in world.evals.get(suite, []) if it.get("choices")][:limit]
        if not items:
            continue
        # Score every suite as multiple choice: a base model is not yet taught to answer on demand.
        items = [{**it, "task_type": "multiple_choice"} for it in items]
        row = {}
        for label, model in (("untrained", untrained), ("pretrained", trained)):
            r = evaluate(model, tok, items, task=suite, fewshot=FEWSHOT)
            row[label] = {"acc": r.metrics["acc"], "acc_norm": r.metrics["acc_norm"], "interval": r.intervals["acc"]}
        row["n"] = len(items)
        row["chance"] = sum(1 / len(it["choices"]) for it in items) / len(items)
        results["suites"][suite] = row
        print(f"  {suite:<16} n={len(items):<4} untrained acc {row['untrained']['acc']:.3f} -> "
              f"pretrained {row['pretrained']['acc']:.3f} (chance {row['chance']:.3f})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _report(run_root: Path, pretrain_dir: Path, evals: dict, timings: dict[str, float]) -> Path:
    manifest = json.loads((pretrain_dir / "manifest.json").read_text())
    final = manifest.get("final", {})
    model = manifest.get("model", {})
    energy = manifest.get("energy", {})
    samples = []
    if (pretrain_dir / "samples.jsonl").exists():
        lines = (pretrain_dir / "samples.jsonl").read_text().splitlines()
        samples = [json.loads(line) for line in lines[-4:]]
    lines = [
        "# llamaforge demo report",
        "",
        f"Run folder: `{run_root}`. Every figure below was measured in this run.",
        "",
        "## Summary: each stage's measured effect",
        "",
        "| stage | effect | time (this invocation; a resumed stage counts only its remainder) |",
        "|---|---|---|",
        f"| world | built-in world generated (`{pretrain_dir / 'world'}`; datacard in `datacard.md`) | |",
        f"| pretrain | validation perplexity {final.get('val_ppl', float('nan')):.2f} vs unigram "
        f"{final.get('unigram_val_ppl', float('nan')):.2f} "
        f"({final.get('val_ppl', 0) / max(final.get('unigram_val_ppl', 1), 1e-9):.3f}× the unigram), "
        f"{model.get('parameters', 0):,} parameters, {final.get('tokens_seen', 0):,} tokens | "
        f"{timings.get('pretrain', 0):.0f} s |",
    ]
    for suite, row in evals.get("suites", {}).items():
        lo, hi = row["pretrained"]["interval"]
        lines.append(
            f"| eval: {suite} | {FEWSHOT}-shot accuracy {row['untrained']['acc']:.3f} (untrained) -> "
            f"{row['pretrained']['acc']:.3f} [95% CI {lo:.3f}-{hi:.3f}], chance {row['chance']:.3f}, n={row['n']} | |"
        )
    lines += [
        "",
        "## Energy and carbon (SPEC §12 formula)",
        "",
        f"{energy.get('device_hours', 0):.4f} device-hours, {energy.get('kwh', 0):.4f} kWh, "
        f"{energy.get('tco2eq', 0) * 1000:.4f} kg CO2eq ({energy.get('power_source', 'configured')} power).",
        "",
        "## Samples from the pretrained model",
        "",
    ]
    for s in samples:
        lines.append(f"- **{s.get('prompt', '').strip()}** {s.get('completion', '').strip()}")
    lines += ["", "Stages of the paper not yet in this demo: SFT, reward models, rejection sampling, PPO, "
              "GAtt, context distillation (tracked in the project's issues).", ""]
    report = run_root / "report.md"
    report.write_text("\n".join(lines))
    (run_root / "report.json").write_text(json.dumps({"pretrain": final, "evals": evals, "timings": timings},
                                                     indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llamaforge demo",
        description="Run the pipeline end to end on the built-in world: world -> tokenizer -> pretraining -> "
        "evaluation -> report. Re-running continues where an interrupted run stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--name", default="demo", help="run folder name under --root")
    p.add_argument("--root", default="runs", help="folder holding runs")
    p.add_argument("--quick", action="store_true", help="a tiny world and model: the same path in a few minutes (CI)")
    p.add_argument("--eval-limit", type=int, default=None, help="items per eval suite (default 200; 60 with --quick)")
    args = p.parse_args(argv)
    name = args.name if not args.quick or args.name != "demo" else "demo-quick"
    run_root = Path(args.root) / name
    limit = args.eval_limit or (60 if args.quick else 200)
    timings: dict[str, float] = {}

    from .stages.pretrain import main as pretrain_main

    print(f"[1/3] world + tokenizer + pretraining -> {run_root}", flush=True)
    start = time.time()
    code = pretrain_main(_pretrain_overrides(name, args.root, args.quick))
    timings["pretrain"] = time.time() - start
    if code != 0:
        print(f"llamaforge demo: pretraining stopped (exit {code}); run the same command again to resume",
              file=sys.stderr)
        return code
    pretrain_dir = _stage_dir(run_root, "pretrain")

    from .checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(pretrain_dir)
    print(f"[2/3] evaluation on the world's suites ({checkpoint})", flush=True)
    start = time.time()
    evals = _evaluate(checkpoint, pretrain_dir / "world", limit, run_root / "eval.json")
    timings["eval"] = time.time() - start

    print("[3/3] report", flush=True)
    report = _report(run_root, pretrain_dir, evals, timings)
    print()
    print(report.read_text().split("## Energy")[0].strip())
    print(f"\nreport: {report}")
    return 0
