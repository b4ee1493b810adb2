"""`llamaforge demo`: the whole pipeline on the built-in world, each stage's effect measured by
the world's own yardsticks.

The pipeline is the ordered list `STAGES`: world -> tokenizer -> pretrain -> sft -> reward ->
rlhf -> distill -> gatt -> eval -> report. A stage is a function `(ctx: Context) -> dict` that
returns its summary (`{"stage", "effect", "seconds", "metrics", "tables", "plots", "outputs"}`,
`outputs` naming what later stages use, e.g. `{"model": path}`); the demo writes it to
`runs/<name>/NN-<stage>/summary.json`. A stage whose folder already holds a summary is done and
is not run again, so re-running after an interruption continues where it stopped (pretraining
also resumes mid-way from its newest checkpoint). A stage whose code has not landed (its
module or function does not import) is skipped with a line saying so.

Adding a stage is a few lines: write `def _mystage(ctx): ...; return summary` and put
`Stage("mystage", budget_s, _mystage, requires=("llamaforge.stages.mystage:function",))`
in `STAGES` where it belongs.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import read_json, write_json, write_summary

# Eval suites of the world scored as multiple choice (academic columns of SPEC §11).
ACADEMIC_SUITES = ("world_knowledge", "reading", "commonsense", "math")
FEWSHOT = 3


class StageStopped(RuntimeError):
    """A stage was stopped (SIGINT/SIGTERM) or failed in a way re-running can continue from."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Stage:
    name: str
    budget_s: float  # demo preset on 2 idle cores; the ETA adds these up
    run: Callable[[Context], dict]
    requires: tuple[str, ...] = ()  # "module:function" the stage calls; skipped until all of them import
    quick_budget_s: float | None = None  # with --quick (default: a tenth of budget_s)

    def missing(self) -> str | None:
        """Why the stage cannot run yet (its code has not landed), or None."""
        for requirement in self.requires:
            module, _, function = requirement.partition(":")
            try:
                loaded = importlib.import_module(module)
            except ImportError as e:
                return f"{module} does not import yet ({e})"
            if not callable(getattr(loaded, function, None)):
                return f"{module}.{function} has not landed yet"
        return None

    def budget(self, quick: bool) -> float:
        if quick:
            return self.quick_budget_s if self.quick_budget_s is not None else self.budget_s / 10
        return self.budget_s


@dataclass
class Context:
    """What a stage sees: the run folder, its own folder, the world and earlier stages' outputs."""

    root: Path
    quick: bool = False
    eval_limit: int = 120
    stage: str = ""
    dirs: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)  # stage -> its summary's "outputs"
    _world: Any = None

    @property
    def dir(self) -> Path:
        """This stage's folder, runs/<name>/NN-<stage>."""
        return self.dirs[self.stage]

    @property
    def world(self):
        if self._world is None:
            from .world import World

            self._world = World.load(self.output("world"))
        return self._world

    def output(self, key: str, *, stages: tuple[str, ...] | None = None) -> Any:
        """The newest earlier stage's output `key` (e.g. "model", "tokenizer")."""
        for name in reversed(list(stages or self.outputs)):
            value = self.outputs.get(name, {}).get(key)
            if value is not None:
                return value
        raise KeyError(f"no earlier stage produced {key!r} (finished: {', '.join(self.outputs) or 'none'})")

    def model(self, *stages: str) -> Path:
        """The model of the first of `stages` that produced one, else the newest model so far."""
        for name in stages:
            if self.outputs.get(name, {}).get("model"):
                return Path(self.outputs[name]["model"])
        return Path(self.output("model"))


# --------------------------------------------------------------------------- stages of today


def _world_stage(ctx: Context) -> dict:
    from .world import World, build_datacard, write_world

    size = "tiny" if ctx.quick else "demo"
    world = World.generate(seed=0, size=size)
    card = build_datacard(world)
    write_world(world, ctx.dir / "world", datacard=card)
    corpus = card["corpus"]
    return {"effect": f"built-in world (seed 0, size {size}): {corpus['documents']:,} documents, "
                      f"{corpus['words']:,} words, {corpus['toxicity']['toxic_share']:.1%} toxic documents",
            "metrics": {"documents": corpus["documents"], "words": corpus["words"],
                        "toxic_share": corpus["toxicity"]["toxic_share"]},
            "outputs": {"world": str(ctx.dir / "world")}}


def _tokenizer_stage(ctx: Context) -> dict:
    from .data.sources import input_files, iter_documents
    from .tokenizer import train_tokenizer

    vocab = 512 if ctx.quick else 2048
    corpus = input_files([Path(ctx.output("world")) / "corpus"])
    path = ctx.dir / "tokenizer.model"
    tok = train_tokenizer(iter_documents(corpus), path, vocab)
    # Compression on 500 documents: bytes per token (1.0 would be byte-level) and tokens per word.
    sample = list(itertools.islice(ctx.world.pretraining_documents(), 500))
    tokens = sum(len(tok.encode(text, bos=False, eos=False)) for text in sample)
    n_bytes, words = sum(len(text.encode("utf-8")) for text in sample), sum(len(text.split()) for text in sample)
    return {"effect": f"{vocab}-piece BPE tokenizer: {n_bytes / tokens:.2f} bytes per token (byte-level: 1.00), "
                      f"{tokens / words:.2f} tokens per word on 500 documents",
            "metrics": {"vocab_size": vocab, "bytes_per_token": n_bytes / tokens, "tokens_per_word": tokens / words},
            "outputs": {"tokenizer": str(path)}}


def _pretrain_overrides(ctx: Context) -> list[str]:
    overrides = [f"run.dir={ctx.dir}", f"run.name={ctx.root.name}", f"run.root={ctx.root.parent}",
                 f"data.inputs={Path(ctx.output('world')) / 'corpus'}", f"data.tokenizer={ctx.output('tokenizer')}"]
    if ctx.quick:
        # Small enough for CI (about a minute of training on 2 cores), same code path.
        overrides += ["model.preset=tiny", "data.seq_len=128", "data.batch_size=16", "data.val_fraction=0.05",
                      "train.max_steps=120", "train.warmup_steps=10", "train.lr=3e-3", "train.eval_every=60",
                      "train.checkpoint_every=60", "data.eval_batches=8"]
    return overrides


def _pretrain_stage(ctx: Context) -> dict:
    from .checkpoint import latest_checkpoint
    from .stages.pretrain import main as pretrain_main

    code = pretrain_main(_pretrain_overrides(ctx))
    if code != 0:
        raise StageStopped(f"pretraining stopped (exit {code})", code)
    manifest = read_json(ctx.dir / "manifest.json") or {}
    final, model = manifest.get("final", {}), manifest.get("model", {})
    ppl, unigram = final.get("val_ppl", float("nan")), final.get("unigram_val_ppl", float("nan"))
    return {"effect": f"validation perplexity {unigram:.1f} (unigram model) -> {ppl:.2f} "
                      f"({ppl / unigram:.3f}x the unigram), {model.get('parameters', 0):,} parameters, "
                      f"{final.get('tokens_seen', 0):,} tokens",
            "metrics": {"val_ppl": ppl, "unigram_val_ppl": unigram, "parameters": model.get("parameters", 0),
                        "tokens_seen": final.get("tokens_seen", 0)},
            "outputs": {"model": str(latest_checkpoint(ctx.dir)), "pretrained": str(latest_checkpoint(ctx.dir))}}


# --------------------------------------------------------------------------- stages of the others
# Each calls one function of its stage module; the signatures are the stage owners'.


def _sft_stage(ctx: Context) -> dict:
    from .stages.sft import run_demo_sft

    # A helpfulness-first mix: a quarter of the world's safety demonstrations and 360 adversarial
    # prompts answered as an annotator told only to be helpful would (stages.sft.demo_dialogs).
    # The SFT model then still violates (18% measured), as the paper's models did before safety
    # tuning, so that the safety RM in RLHF and context distillation (SPEC §10) have work to show.
    return run_demo_sft(ctx.model("pretrain"), ctx.world, ctx.dir, eval_prompts=24 if ctx.quick else 120,
                        safety_share=0.25, compliant=360)


def _reward_stage(ctx: Context) -> dict:
    from .stages.reward import train_reward_models

    sft = ctx.outputs.get("sft", {}).get("model")
    quick = ("data.max_pairs=200", "data.eval_pairs=100") if ctx.quick else ()
    return train_reward_models(ctx.model("sft", "pretrain"), ctx.world, ctx.dir, policy=sft, overrides=quick,
                               policy_pairs=16 if ctx.quick else 256)


def _rlhf_stage(ctx: Context) -> dict:
    from .stages.rlhf import run_rlhf

    quick = ("eval_prompts=48", "policy_pairs=16", "reward_overrides=data.max_pairs=200,data.eval_pairs=100",
             "rejection.prompts=32", "ppo.iterations=2", "ppo.batch_size=16", "ppo.minibatch_size=8",
             "ppo.eval_prompts=16", "ppo.max_new_tokens=32") if ctx.quick else ()
    # Round 1 reuses the reward stage's RMs (trained on the SFT model's pairs) instead of retraining.
    reward = ctx.outputs.get("reward", {})
    rms = {k: reward[k] for k in ("helpfulness", "safety")} if reward.get("helpfulness") and reward.get("safety") else None
    return run_rlhf(ctx.model("sft"), ctx.world, ctx.dir, iterations=2, reward_models=rms, overrides=quick)


def _gatt_stage(ctx: Context) -> dict:
    from .stages.gatt import run_demo_gatt

    return run_demo_gatt(ctx.model(), ctx.world, ctx.dir, quick=ctx.quick)


def _distill_stage(ctx: Context) -> dict:
    from .stages.distill import run_demo_distill

    # Gated by the reward stage's safety RM (SPEC §10); the gold judge when that stage did not run.
    safety_rm = ctx.outputs.get("reward", {}).get("safety")
    return run_demo_distill(ctx.model(), ctx.world, ctx.dir, safety_rm=safety_rm, quick=ctx.quick)


# --------------------------------------------------------------------------- eval and report


def _eval_stage(ctx: Context) -> dict:
    """World suites (multiple choice) and safety evaluations on the untrained twin, the pretrained
    model and the final chat model (when fine-tuning ran), in the layout of SPEC §11."""
    import torch

    from .checkpoint import load_model
    from .eval import evaluate
    from .eval.safety import safety_eval
    from .model import Transformer
    from .tokenizer import Tokenizer

    world, limit = ctx.world, ctx.eval_limit
    tok = Tokenizer(ctx.output("tokenizer"))
    pretrained = load_model(ctx.model("pretrain"))
    torch.manual_seed(0)
    models = {"untrained": (Transformer(pretrained.args).eval(), False), "pretrained": (pretrained, False)}
    final = ctx.model()
    if final != ctx.model("pretrain"):
        models["final chat"] = (load_model(final), True)

    academic: dict[str, dict] = {name: {} for name in models}
    safety: dict[str, dict] = {}
    rows, metrics = [], {}
    for suite in ACADEMIC_SUITES:
        items = [{**it, "task_type": "multiple_choice"} for it in world.evals.get(suite, []) if it.get("choices")][:limit]
        if not items:
            continue
        chance = sum(1 / len(it["choices"]) for it in items) / len(items)
        row = [suite, len(items), round(chance, 3)]
        for name, (model, _) in models.items():
            result = evaluate(model, tok, items, task=suite, fewshot=FEWSHOT)
            academic[name][suite] = result.metrics["acc"]
            metrics[f"{name}/{suite}"] = result.metrics["acc"]
            lo, hi = result.intervals["acc"]
            row.append(f"{result.metrics['acc']:.3f} [{lo:.3f}, {hi:.3f}]")
        rows.append(row)
    prompts = world.prompt_records(split="eval")
    for name, (model, chat) in models.items():
        if name == "untrained":
            continue
        result = safety_eval(model, tok, {k: world.evals.get(k, []) for k in ("truthfulqa", "toxigen")}, chat=chat,
                             prompts=prompts if chat else (), limit=limit)
        safety[name] = {"truthfulqa": result["metrics"].get("truthfulqa/true_and_informative"),
                        "toxigen": result["metrics"].get("toxigen/toxic")}
        metrics.update({f"{name}/{k}": v for k, v in result["metrics"].items()})
    chat_rows = [[name, *(metrics.get(f"{name}/{k}") for k in ("helpfulness", "violation", "false_refusal", "parsed"))]
                 for name, (_, chat) in models.items() if chat]
    sft = ctx.outputs.get("sft", {}).get("model")
    comparison = (_model_based(ctx, models["final chat"][0], load_model(sft), tok, metrics)
                  if "final chat" in models and sft and Path(sft) != final else None)
    first = ACADEMIC_SUITES[0]
    effect = " -> ".join(f"{academic[n].get(first, float('nan')):.3f} ({n})" for n in models)
    safety_effect = "; ".join(f"{n}: TruthfulQA {s['truthfulqa'] or 0:.1%} true+informative, "
                              f"ToxiGen {s['toxigen'] or 0:.1%} toxic" for n, s in safety.items())
    safety_effect += "".join(f"; {row[0]}: violation {row[2]:.1%}, false refusal {row[3]:.1%} on held-out prompts"
                             for row in chat_rows if row[2] is not None and row[3] is not None)
    if comparison:
        _, win, tie, loss, _ = comparison["rows"][0]
        safety_effect += f"; final vs SFT by the gold judge: win {win:.0%}, tie {tie:.0%}, loss {loss:.0%}"
    return {"effect": f"{first} {FEWSHOT}-shot accuracy {effect}; {safety_effect}",
            "metrics": metrics,
            "eval_table": {"academic": academic, "safety": safety},
            "tables": [{"title": f"World suites, {FEWSHOT}-shot multiple-choice accuracy [95% CI]",
                        "columns": ["suite", "n", "chance", *models], "rows": rows}]
            + ([{"title": "Chat model on held-out prompts (gold judges)",
                 "columns": ["model", "helpfulness (borderline)", "violation (adversarial)", "false refusal", "parsed"],
                 "rows": chat_rows}] if chat_rows else [])
            + ([comparison] if comparison else [])}


def _model_based(ctx: Context, final, sft, tok, metrics: dict) -> dict:
    """Win / tie / loss of the final chat model against the SFT model on held-out helpful prompts,
    judged by the gold reward and by the reward models (SPEC §11's model-based evaluation)."""
    from .eval.chat import record_dialog
    from .eval.compare import compare, gold_scorer, load_scorer
    from .generate import SamplingParams, chat_replies

    records = ctx.world.prompt_records("helpful", "eval")[: min(ctx.eval_limit, 48)]
    dialogs = [record_dialog(r) for r in records]
    params = SamplingParams(max_new_tokens=64)
    replies = [[c.text or "" for c in chat_replies(m, tok, dialogs, params)] for m in (final, sft)]
    scorers = {"gold reward": gold_scorer}
    reward = ctx.outputs.get("reward", {})
    if reward.get("helpfulness"):
        scorers["reward models (Rc, SPEC §8)"] = load_scorer(reward["helpfulness"], reward.get("safety", ""))
    rows = []
    for name, scorer in scorers.items():
        result = compare(records, *replies, scorer=scorer)
        lo, hi = result["intervals"]["win_minus_loss"]
        rows.append([name, result["win"], result["tie"], result["loss"],
                     f"{result['win_minus_loss']:+.3f} [{lo:+.3f}, {hi:+.3f}]"])
        metrics.update({f"final_vs_sft/{name}/{k}": result[k] for k in ("win", "tie", "loss")})
    return {"title": f"Model-based evaluation: final chat model vs SFT on {len(records)} held-out helpful prompts",
            "columns": ["judge", "win", "tie", "loss", "win - loss [95% CI]"], "rows": rows}


def _report_stage(ctx: Context) -> dict:
    from .report import build_report

    html_path, md_path = build_report(ctx.root)
    return {"effect": f"report written: {html_path}", "outputs": {"report": str(html_path), "markdown": str(md_path)},
            "done_again": True}


STAGES: list[Stage] = [
    Stage("world", 10, _world_stage, quick_budget_s=2),
    Stage("tokenizer", 20, _tokenizer_stage, quick_budget_s=5),
    Stage("pretrain", 240, _pretrain_stage, quick_budget_s=60),
    Stage("sft", 120, _sft_stage, requires=("llamaforge.stages.sft:run_demo_sft",)),
    Stage("reward", 150, _reward_stage, requires=("llamaforge.stages.reward:train_reward_models",)),
    # The loop fine-tunes through the SFT loop (rejection sampling), so it needs SFT's code too.
    Stage("rlhf", 240, _rlhf_stage, requires=("llamaforge.stages.rlhf:run_rlhf", "llamaforge.stages.sft:finetune")),
    # Distillation is part of safety tuning (SPEC §10), GAtt comes after RLHF (SPEC §9): and GAtt's
    # replay of the world's SFT dialogs would otherwise remove the violations before distillation.
    Stage("distill", 75, _distill_stage, requires=("llamaforge.stages.distill:run_demo_distill",)),
    Stage("gatt", 240, _gatt_stage, requires=("llamaforge.stages.gatt:run_demo_gatt",)),
    Stage("eval", 60, _eval_stage, quick_budget_s=20),
    Stage("report", 10, _report_stage, quick_budget_s=5),
]


# --------------------------------------------------------------------------- the driver


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def stage_folder(root: Path, index: int, name: str) -> Path:
    """The stage's existing folder (any NN), else NN = its place in the pipeline."""
    existing = sorted(p for p in root.glob(f"[0-9][0-9]-{name}") if p.is_dir())
    return existing[-1] if existing else root / f"{index + 1:02d}-{name}"


def run_pipeline(root: Path, stages: list[Stage] | None = None, *, quick: bool = False, eval_limit: int = 120,
                 out=print) -> dict:
    """Run (or continue) every stage in order; returns the pipeline record (also `root/pipeline.json`).

    A stage runs only when its folder holds no summary.json (the report always runs again). A
    stage that raises is recorded as failed (`record["failed"]`) and the others still run, so the
    report shows what did work; the next invocation tries it again. Raises StageStopped when a
    stage is interrupted (SIGINT) or stops itself; what finished before it is kept.
    """
    stages = STAGES if stages is None else stages
    root.mkdir(parents=True, exist_ok=True)
    ctx = Context(root=root, quick=quick, eval_limit=eval_limit)
    previous = read_json(root / "pipeline.json") or {}
    record: dict = {"stages": [], "seconds": 0.0}
    runnable = [s for s in stages if s.missing() is None]
    started, total = time.time(), len(stages)
    for index, stage in enumerate(stages):
        folder = stage_folder(root, index, stage.name)
        ctx.dirs[stage.name], ctx.stage = folder, stage.name
        label = f"[{index + 1}/{total}] {stage.name:<9}"
        reason = stage.missing()
        if reason is not None:
            out(f"{label} skipped: {reason}")
            record["stages"].append({"stage": stage.name, "status": "skipped", "note": reason})
            continue
        done = read_json(folder / "summary.json")
        if done is not None and not done.get("done_again"):
            out(f"{label} done earlier ({done.get('seconds', 0):.0f} s): {done.get('effect', '')}")
        else:
            remaining = sum(s.budget(quick) for s in runnable[runnable.index(stage):])
            out(f"{label} running — elapsed {_clock(time.time() - started)}, ETA {_clock(remaining)} "
                f"(budget {_clock(stage.budget(quick))})")
            begin = time.time()
            try:
                summary = dict(stage.run(ctx) or {})
            except KeyboardInterrupt:
                raise StageStopped(f"interrupted in stage {stage.name}", 130) from None
            except StageStopped:
                raise
            except Exception as e:  # noqa: BLE001 - one broken stage must not hide the others' results
                traceback.print_exc()
                reason = f"failed after {time.time() - begin:.0f} s: {type(e).__name__}: {e}"
                out(f"{label} {reason}")
                record["stages"].append({"stage": stage.name, "status": "failed", "note": reason})
                record["failed"] = record.get("failed", []) + [stage.name]
                continue
            summary.setdefault("stage", stage.name)
            summary.setdefault("seconds", round(time.time() - begin, 1))
            folder.mkdir(parents=True, exist_ok=True)
            write_summary(folder, summary)
            done = summary
            out(f"{label} finished in {done['seconds']:.0f} s: {done.get('effect', '')}")
        ctx.outputs[stage.name] = done.get("outputs") or {}
        record["seconds"] += float(done.get("seconds") or 0)
        record["stages"].append({"stage": stage.name, "status": "done", "folder": folder.name,
                                 "effect": done.get("effect", ""), "seconds": done.get("seconds")})
        write_json(root / "pipeline.json", {**previous, **record})
    return record


def summary_table(record: dict) -> str:
    lines = [f"{'stage':<10} {'time':>7}  effect", f"{'-' * 10} {'-' * 7}  {'-' * 40}"]
    for entry in record["stages"]:
        seconds = f"{entry['seconds']:.0f} s" if entry.get("seconds") is not None else ""
        status, note = entry["status"], entry.get("note", "")
        effect = entry.get("effect") if status == "done" else note if status == "failed" else f"stage not run: {note}"
        lines.append(f"{entry['stage']:<10} {seconds:>7}  {effect}")
    lines.append(f"{'total':<10} {record['seconds']:>5.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llamaforge demo",
        description="Run the pipeline end to end on the built-in world: " + " -> ".join(s.name for s in STAGES)
        + ". Re-running continues where an interrupted run stopped; stages whose code has not landed are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--name", default="demo", help="run folder name under --root (demo-quick with --quick)")
    p.add_argument("--root", default="runs", help="folder holding runs")
    p.add_argument("--quick", action="store_true", help="a tiny world and model: the same path in a few minutes (CI)")
    p.add_argument("--eval-limit", type=int, default=None, help="items per eval suite (default 120; 40 with --quick)")
    args = p.parse_args(argv)
    name = "demo-quick" if args.quick and args.name == "demo" else args.name
    root = Path(args.root) / name
    limit = args.eval_limit or (40 if args.quick else 120)
    print(f"llamaforge demo -> {root}", flush=True)
    started = time.time()
    try:
        record = run_pipeline(root, quick=args.quick, eval_limit=limit, out=lambda line: print(line, flush=True))
    except StageStopped as e:
        print(f"llamaforge demo: {e}; run the same command again to continue", file=sys.stderr)
        return e.code
    print()
    print(summary_table(record))
    print(f"\nthis invocation: {time.time() - started:.0f} s wall; stages of all invocations: {record['seconds']:.0f} s")
    print(f"report: {root / 'report.html'} (Markdown: {root / 'report.md'})")
    if record.get("failed"):
        print(f"llamaforge demo: stage(s) {', '.join(record['failed'])} failed (see above); fix and run the same "
              "command again to continue", file=sys.stderr)
        return 1
    return 0
