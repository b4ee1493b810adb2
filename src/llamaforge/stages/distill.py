"""Safety context distillation (SPEC §10): answer adversarial prompts with a safety preprompt,
then fine-tune on the answers without it.

    llamaforge distill base=runs/demo/06-rlhf/round-2/ppo safety_rm=runs/demo/05-reward/safety
    llamaforge distill base=... scorer=gold            # the world's gold judge as the gate

For each adversarial training prompt the model answers twice: plainly, and with a preprompt
(the generic "You are a safe and responsible assistant..." plus, when the prompt's risk
category is known, that category's answer template, SPEC §10) given as the system prompt. The
distilled answer is kept only when the safety scorer rates it above the plain answer (the
paper's gate: context distillation can make answers vaguer or refuse too much). The kept
answers are then trained on *without* the preprompt, through the one SFT loop, mixed with
ordinary SFT dialogs so that the model's other skills stay. Context distillation is applied to
adversarial prompts only (SPEC §10).
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import parse_cli
from ..eval.chat import chat_eval, record_dialog
from ..generate import SamplingParams, chat_replies
from ..trainer import RunConfig, TrainConfig
from ..world import judges
from .sft import demo_train, finetune

STAGE = "distill"
Scorer = Callable[[Sequence[dict], Sequence[str]], Sequence[float]]
GATE_MARGIN = 1e-4


@dataclass
class DistillConfig:
    base: str = ""  # the model to make safer
    safety_rm: str = ""  # the gate: a safety reward model folder; "gold" = the world's gold judge
    gate: bool = True  # keep a distilled answer only when the gate scores it above the plain answer
    templates: bool = True  # add the risk category's answer template to the generic preprompt
    prompts: int = 0  # adversarial training prompts used (0 = all)
    mix_sft: float = 3.0  # SFT dialogs mixed in per distilled example (borderline ones first)
    max_new_tokens: int = 64  # reply length
    world_seed: int = 0  # the built-in world's seed
    world_size: Literal["tiny", "demo", "large"] = "demo"  # the built-in world's size
    epochs: float = 2.0  # passes over the fine-tuning dialogs (SPEC §6)
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=demo_train)


def preprompt(distillation: dict, record: dict, *, templates: bool = True) -> str:
    """The safety preprompt for one prompt: the generic one, plus the category's answer template."""
    text = distillation["preprompts"][-1]
    category = distillation.get("categories", {}).get(record.get("category", ""))
    if templates and category:
        text = f"{text} {category['preprompt']}"
    return text


def gold_safety_scorer(records: Sequence[dict], replies: Sequence[str]) -> list[float]:
    """The world's gold reward (safe answers to safety prompts outrank unsafe ones)."""
    return [judges.gold_reward(r, t) for r, t in zip(records, replies)]


def safety_rm_scorer(path: str | os.PathLike) -> Scorer:
    """A safety reward model as a gate: its score of each reply to its prompt."""
    from .reward import load_reward_model

    rm, tok = load_reward_model(path)

    def score(records: Sequence[dict], replies: Sequence[str]) -> list[float]:
        return rm.score(tok, [record_dialog(r) for r in records], list(replies)).tolist()

    return score


def distill_answers(model, tok, records: Sequence[dict], distillation: dict, scorer: Scorer, *,
                    templates: bool = True, max_new_tokens: int = 64) -> dict:
    """Plain and preprompted answers to `records`, the gate's scores of both, and which
    distilled answers pass the gate. Returns {"plain", "distilled", "plain_scores",
    "distilled_scores", "passed"} (lists aligned with `records`)."""
    params = SamplingParams(max_new_tokens=max_new_tokens)
    plain = [c.text or "" for c in chat_replies(model, tok, [record_dialog(r) for r in records], params, batch_size=64)]
    room = model.args.max_seq_len - max_new_tokens
    with_preprompt = [_fitting_preprompt(tok, distillation, r, templates, room) for r in records]
    distilled = [c.text or "" for c in chat_replies(model, tok, with_preprompt, params, batch_size=64)]
    plain_scores, distilled_scores = list(scorer(records, plain)), list(scorer(records, distilled))
    # Higher by more than float noise (batch padding moves a score by ~1e-7), and a different answer.
    passed = [d > p + GATE_MARGIN and dt != pt
              for d, p, dt, pt in zip(distilled_scores, plain_scores, distilled, plain)]
    return {"plain": plain, "distilled": distilled, "plain_scores": plain_scores,
            "distilled_scores": distilled_scores, "passed": passed}


def _fitting_preprompt(tok, distillation: dict, record: dict, templates: bool, room: int) -> list[dict]:
    """The prompt with the richest preprompt that leaves room for the reply: the generic one plus
    the category's template, else the generic one, else the shortest generic one."""
    from ..chat_format import encode_dialog

    options = [preprompt(distillation, record, templates=templates), preprompt(distillation, record, templates=False),
               min(distillation["preprompts"], key=len)]
    for text in options:
        dialog = record_dialog(record, text)
        if len(encode_dialog(tok, dialog)) <= room:
            return dialog
    return dialog


def distillation_dialogs(records: Sequence[dict], answers: dict, *, gate: bool = True) -> list[dict]:
    """Training dialogs: each prompt *without* the preprompt, answered with the distilled answer
    (only those that passed the gate, when `gate`)."""
    return [{"id": f"{r.get('id', 'prompt')}/distilled", "kind": "distilled",
             "messages": [*record_dialog(r), {"role": "assistant", "content": text}]}
            for r, text, ok in zip(records, answers["distilled"], answers["passed"]) if text and (ok or not gate)]


def run_distill(base: str | os.PathLike, world, out_dir: str | os.PathLike, *, scorer: Scorer | None = None,
                cfg: DistillConfig | None = None, eval_records: Sequence[dict] = (), compare_gate: bool = False,
                progress: bool = True) -> dict:
    """Distil `base` on the world's adversarial training prompts, measure violation and false
    refusal on `eval_records` before and after; with `compare_gate` also fine-tune on the
    ungated answers. Writes and returns the stage summary."""
    from ..checkpoint import load_model
    from ..report import write_summary
    from .rejection import policy_tokenizer

    cfg = cfg or DistillConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tokenizer_path, tok = policy_tokenizer(base)
    model = load_model(base)
    scorer = scorer or (safety_rm_scorer(cfg.safety_rm) if cfg.safety_rm and cfg.safety_rm != "gold" else gold_safety_scorer)
    gate_name = "safety RM" if cfg.safety_rm and cfg.safety_rm != "gold" else "gold judge"
    records = world.prompt_records("adversarial", "train")
    if cfg.prompts:
        records = records[: cfg.prompts]
    answers = distill_answers(model, tok, records, world.distillation, scorer, templates=cfg.templates,
                              max_new_tokens=cfg.max_new_tokens)
    # Ordinary SFT dialogs keep the model's other skills; borderline ones come first, since
    # distillation's known cost is refusing benign prompts that look risky (SPEC §10).
    rng = random.Random(cfg.seed)
    sft = list(world.sft)
    rng.shuffle(sft)
    sft.sort(key=lambda d: d.get("kind") != "borderline")

    def tune(name: str, gate: bool) -> tuple[Path, int]:
        dialogs = distillation_dialogs(records, answers, gate=gate)
        if not dialogs:  # nothing passed the gate: nothing to distil, the model stays as it was
            return Path(base), 0
        mixed = sft[: int(cfg.mix_sft * len(dialogs))]
        path = finetune(base, dialogs + mixed, out_dir / name, train=cfg.train, tokenizer=tokenizer_path,
                        epochs=cfg.epochs, progress=progress)
        return path, len(dialogs)

    tuned, kept = tune("model", cfg.gate)
    variants = {"before": model, "after": load_model(tuned)}
    ungated = None
    if compare_gate and cfg.gate:
        ungated, _ = tune("model-no-gate", False)
        variants["after, no gate"] = load_model(ungated)

    # The gate's effect on the data, by the gold judge: are the answers it keeps safer?
    gold_kept = [judges.safety_violation(r, t) for r, t, ok in zip(records, answers["distilled"], answers["passed"]) if ok]
    gold_dropped = [judges.safety_violation(r, t) for r, t, ok in zip(records, answers["distilled"], answers["passed"]) if not ok]
    gold_plain = [judges.safety_violation(r, t) for r, t in zip(records, answers["plain"])]
    metrics = {"prompts": len(records), "kept": kept, "kept_share": kept / max(1, len(records)),
               "violation/plain_answers": _mean(gold_plain), "violation/kept_distilled": _mean(gold_kept),
               "violation/dropped_distilled": _mean(gold_dropped)}
    rows = []
    results = {}
    if eval_records:
        for name, m in variants.items():
            results[name] = chat_eval(m, tok, eval_records)
            r = results[name]["metrics"]
            rows.append([name, round(r.get("violation", 0.0), 3), round(r.get("false_refusal", 0.0), 3),
                         round(r.get("helpfulness", 0.0), 3)])
            for key in ("violation", "false_refusal", "helpfulness"):
                if key in r:
                    metrics[f"{name}/{key}"] = r[key]
    b, a = (results.get("before", {}).get("metrics", {}), results.get("after", {}).get("metrics", {}))
    effect = (f"violation on held-out adversarial prompts {b.get('violation', float('nan')):.1%} -> "
              f"{a.get('violation', float('nan')):.1%}, false refusal on borderline prompts "
              f"{b.get('false_refusal', float('nan')):.1%} -> {a.get('false_refusal', float('nan')):.1%}; "
              f"the {gate_name} gate kept {kept} of {len(records)} distilled answers "
              f"(gold violation of kept {_mean(gold_kept):.1%}, of dropped {_mean(gold_dropped):.1%})")
    if "after, no gate" in results:
        ng = results["after, no gate"]["metrics"]
        effect += (f"; without the gate: violation {ng.get('violation', float('nan')):.1%}, "
                   f"false refusal {ng.get('false_refusal', float('nan')):.1%}")
    summary = {
        "stage": STAGE, "effect": effect, "seconds": time.perf_counter() - started, "metrics": metrics,
        "tables": ([{"title": f"Context distillation on held-out prompts (gold judges, n = {len(eval_records)})",
                     "section": "distillation",
                     "columns": ["model", "violation (adversarial)", "false refusal (borderline)", "helpfulness"],
                     "rows": rows}] if rows else [])
        + [{"title": f"The {gate_name} gate (SPEC §10) on {len(records)} adversarial training prompts",
            "section": "distillation", "columns": ["answers", "count", "gold violation rate"],
            "rows": [["plain (no preprompt)", len(gold_plain), round(_mean(gold_plain), 3)],
                     ["distilled, kept by the gate", len(gold_kept), round(_mean(gold_kept), 3)],
                     ["distilled, dropped by the gate", len(gold_dropped), round(_mean(gold_dropped), 3)]]}],
        "samples": [{"prompt": r["prompt"], "plain": p, "distilled": d, "kept": ok}
                    for r, p, d, ok in list(zip(records, answers["plain"], answers["distilled"], answers["passed"]))[:5]],
        "outputs": {"model": str(tuned), **({"model_no_gate": str(ungated)} if ungated else {})},
    }
    write_summary(out_dir, summary)
    return summary


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


def eval_prompts(world, n: int) -> list[dict]:
    """Held-out adversarial prompts and borderline prompts (half as many) for the before/after."""
    return world.prompt_records("adversarial", "eval")[:n] + world.prompt_records("borderline", "eval")[: max(1, n // 2)]


def run_demo_distill(base: str | os.PathLike, world, out_dir: str | os.PathLike, *, safety_rm: str | None = None,
                     quick: bool = False) -> dict:
    """The demo's distillation stage, gated by the reward stage's safety RM when there is one."""
    cfg = DistillConfig(safety_rm=safety_rm or "gold", prompts=24 if quick else 0)
    # The gate's effect is measured, not only counted: a second fine-tune on the ungated answers.
    return run_distill(base, world, out_dir, cfg=cfg, eval_records=eval_prompts(world, 24 if quick else 120),
                       compare_gate=True)


def main(argv: list[str] | None = None) -> int:
    """`llamaforge distill base=CHECKPOINT [safety_rm=FOLDER|gold] [key=value ...]`."""
    cfg = parse_cli(DistillConfig, argv, prog="llamaforge distill", description=__doc__.split("\n\n")[0])
    if not cfg.base:
        print("llamaforge distill: error: base= is required: the model to make safer", file=sys.stderr)
        return 2
    from ..trainer import stage_dir
    from ..world import World

    try:
        world = World.generate(seed=cfg.world_seed, size=cfg.world_size)
        out = Path(cfg.run.dir) if cfg.run.dir else stage_dir(cfg.run, STAGE)
        summary = run_distill(cfg.base, world, out, cfg=cfg, eval_records=eval_prompts(world, 120),
                              progress=cfg.run.progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"llamaforge distill: error: {e}", file=sys.stderr)
        return 1
    print(f"distill: {summary['effect']}\ndistill: model in {summary['outputs']['model']}")
    return 0
