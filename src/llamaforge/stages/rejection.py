"""Rejection sampling (SPEC §8): K replies per prompt from the current policy, scored by the
reward models, the best one kept, and the policy fine-tuned on the kept replies with the SFT
loss (through `stages.sft.finetune`, the one SFT loop).

    llamaforge rejection policy=runs/demo/02-sft helpfulness_rm=runs/demo/03-reward-helpfulness \\
        safety_rm=runs/demo/04-reward-safety
    llamaforge rejection --config configs/rejection/demo.yaml policy=... iteration=2 previous=runs/demo/06-rejection
    llamaforge rejection policy=runs/small-sft sampler=runs/large-sft ...   # the large model samples, the small one learns

Reads top to bottom: prompts (the built-in world's training prompts of every kind, or the
user's JSONL), K samples each at the iteration's temperature (replicated prompts, one
batched decode), the reward Rc of SPEC §8 from both RMs (the gold judges only measure), the
best reply per prompt joined with the best replies of all earlier iterations, fine-tuning,
summary.json with the max-vs-median reward curve over K. With `sampler`, another (larger)
model draws the K samples, scored the same way, and the policy learns from its picks (SPEC §8:
only the largest model was sampled; the smaller ones fine-tuned on its best samples). The
replies pass between them as text, so the two may even use different tokenizers.

A scorer is any `scorer(records, replies) -> list[float]` returning rewards as probabilities
in [0, 1] (the RMs' σ, or a gold judge): `reward_model_scorer` builds Rc from two reward
models, `gold_scorer` uses the world's gold reward (for development and as a reference).
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import config_to_dict, parse_cli
from ..eval.chat import record_dialog
from ..generate import SamplingParams, chat_replies
from ..losses import piecewise_reward
from ..report import write_json, write_summary
from ..trainer import Run, RunConfig, TrainConfig
from ..world import judges

STAGE = "rejection"
SAMPLES_FILE = "best_samples.jsonl"  # the kept dialogs of this and all earlier iterations

Scorer = Callable[[Sequence[dict], Sequence[str]], list[float]]


# --------------------------------------------------------------------------- rewards


def gold_scorer(records: Sequence[dict], replies: Sequence[str]) -> list[float]:
    """The built-in world's gold reward in [0, 1]: the measuring stick, never the training reward
    in the pipeline (it is what the RMs approximate)."""
    return [judges.gold_reward(record, reply) for record, reply in zip(records, replies)]


def reward_model_scorer(helpfulness_rm, safety_rm, tokenizer, *, safety_threshold: float = 0.15,
                        batch_size: int = 32, safety_tokenizer=None) -> Scorer:
    """Rc of SPEC §8 from the two reward models: σ(safety score) on safety prompts and whenever it
    is below `safety_threshold` (0.15, SPEC §8), else σ(helpfulness score). Without a safety RM,
    σ(helpfulness score). Each RM reads the text through its own tokenizer (`safety_tokenizer`:
    the safety RM's, when it differs from the helpfulness RM's `tokenizer`)."""
    safety_tokenizer = safety_tokenizer or tokenizer

    def score(records: Sequence[dict], replies: Sequence[str]) -> list[float]:
        dialogs = [record_dialog(r) for r in records]
        helpful = torch.sigmoid(helpfulness_rm.score(tokenizer, dialogs, replies, batch_size=batch_size))
        if safety_rm is None:
            return helpful.tolist()
        safety = torch.sigmoid(safety_rm.score(safety_tokenizer, dialogs, replies, batch_size=batch_size))
        is_safety = torch.tensor([judges.is_safety_prompt(r) for r in records])
        return piecewise_reward(safety, helpful, is_safety, safety_threshold).tolist()

    return score


def load_scorer(helpfulness_rm: str, safety_rm: str = "", *, safety_threshold: float = 0.15) -> Scorer:
    """A scorer from reward-model folders (`llamaforge reward` outputs); "gold" = `gold_scorer`."""
    if helpfulness_rm == "gold":
        return gold_scorer
    if not helpfulness_rm:
        raise ValueError("helpfulness_rm is required: a reward model folder from `llamaforge reward --kind helpfulness` "
                         "(or 'gold' to rank by the built-in world's gold judges)")
    from .reward import load_reward_model

    helpful, tokenizer = load_reward_model(helpfulness_rm)
    safety, safety_tokenizer = load_reward_model(safety_rm) if safety_rm else (None, None)
    return reward_model_scorer(helpful, safety, tokenizer, safety_threshold=safety_threshold,
                               safety_tokenizer=safety_tokenizer)


def policy_tokenizer(policy: str | Path):
    """(tokenizer path, Tokenizer) carried by a policy folder (a checkpoint or a run folder)."""
    from ..checkpoint import latest_checkpoint, resolve_tokenizer_path
    from ..tokenizer import Tokenizer

    found = resolve_tokenizer_path(Path(policy))
    if found is None and latest_checkpoint(policy) is not None:
        found = resolve_tokenizer_path(latest_checkpoint(policy))
    if found is None:
        raise FileNotFoundError(f"no tokenizer.model in {policy}; the policy folder must carry its tokenizer")
    return found, Tokenizer(found)


# --------------------------------------------------------------------------- sampling


def sample_k(model, tokenizer, records: Sequence[dict], k: int, params: SamplingParams, *,
             batch_size: int = 32) -> list[list[Any]]:
    """K completions per record (the prompts replicated K times, decoded in batches)."""
    dialogs = [record_dialog(r) for r in records for _ in range(k)]
    completions = chat_replies(model, tokenizer, dialogs, params, batch_size=batch_size)
    return [completions[i * k : (i + 1) * k] for i in range(len(records))]


def best_of_k(model, tokenizer, records: Sequence[dict], scorer: Scorer, *, k: int, temperature: float,
              max_new_tokens: int = 64, seed: int = 0, batch_size: int = 32,
              samples: Sequence[Sequence[Any]] | None = None) -> dict[str, Any]:
    """Sample K replies per record, score them, keep the best.

    A reply cut by the length cap (no EOS) is not a finished answer: it only wins when no
    sample of its prompt finished. Returns {"best": [{"record", "reply", "reward", "gold"}],
    "rewards": [[K floats]] (of finished replies, -inf otherwise), "gold": [[K floats]],
    "curve": max-vs-median reward over K, "samples": the K completions of each record}.
    `samples` (an earlier call's) are scored again instead of drawing new ones.
    """
    if samples is None:
        params = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
        samples = sample_k(model, tokenizer, records, k, params, batch_size=batch_size)
    flat_records = [r for r in records for _ in range(k)]
    flat_replies = [c.text or "" for group in samples for c in group]
    rewards = scorer(flat_records, flat_replies)
    gold = gold_scorer(flat_records, flat_replies)
    best, reward_rows, gold_rows = [], [], []
    for i, record in enumerate(records):
        row = rewards[i * k : (i + 1) * k]
        finished = [c.finish_reason == "stop" and bool((c.text or "").strip()) for c in samples[i]]
        ranked = [r if ok else float("-inf") for r, ok in zip(row, finished)]
        pick = max(range(k), key=lambda j: (ranked[j], row[j]))
        best.append({"record": record, "reply": samples[i][pick].text or "", "reward": row[pick],
                     "gold": gold[i * k + pick], "finished": finished[pick]})
        reward_rows.append(row)
        gold_rows.append(gold[i * k : (i + 1) * k])
    return {"best": best, "rewards": reward_rows, "gold": gold_rows, "curve": max_median_curve(reward_rows),
            "samples": samples}


def max_median_curve(rewards: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Mean over prompts of the max and the median reward among the first k samples, k = 1..K:
    the gap between the two is what rejection sampling can gain (SPEC §8, the paper's Figure 7)."""
    K = min(len(row) for row in rewards)
    ks = list(range(1, K + 1))
    return {"k": ks,
            "max": [statistics.fmean(max(row[:k]) for row in rewards) for k in ks],
            "median": [statistics.fmean(statistics.median(row[:k]) for row in rewards) for k in ks]}


def pairwise_agreement(rewards: Sequence[Sequence[float]], gold: Sequence[Sequence[float]]) -> float | None:
    """How often the scorer orders two samples of one prompt as the gold judge does, over the
    pairs both tell apart: best-of-K can only gain what this agreement allows (0.5 = chance).
    None when no pair differs in both."""
    agree = total = 0
    for row, gold_row in zip(rewards, gold):
        for i in range(len(row)):
            for j in range(i + 1, len(row)):
                if row[i] != row[j] and gold_row[i] != gold_row[j]:
                    total += 1
                    agree += (row[i] > row[j]) == (gold_row[i] > gold_row[j])
    return round(agree / total, 4) if total else None


def selection_by_group(result: dict) -> list[list]:
    """Rows [group, prompts, gold of all samples, gold of kept, scorer-gold agreement] per prompt
    kind (helpful prompts per task, when the records name one): where the scorer's picks beat a
    random sample by the gold judge, and where they do not."""
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(result["best"]):
        record = b["record"]
        kind = record.get("kind") or "prompt"
        key = f"{kind}/{record['task']}" if kind == "helpful" and record.get("task") else kind
        groups.setdefault(key, []).append(i)
    rows = []
    for key in sorted(groups):
        idx = groups[key]
        gold_rows = [result["gold"][i] for i in idx]
        rows.append([key, len(idx), round(statistics.fmean(g for row in gold_rows for g in row), 4),
                     round(statistics.fmean(result["best"][i]["gold"] for i in idx), 4),
                     pairwise_agreement([result["rewards"][i] for i in idx], gold_rows)])
    return rows


def dialogs_of(best: Sequence[dict]) -> list[dict]:
    """The kept replies as SFT dialogs ({"messages": [...], ...}) for `sft.finetune`."""
    return [{"id": b["record"].get("id"), "messages": [*record_dialog(b["record"]),
                                                       {"role": "assistant", "content": b["reply"]}],
             "reward": b["reward"], "gold": b["gold"]} for b in best]


def merge_pools(previous: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """Keep the best samples of all iterations (SPEC §8): earlier ones stay, the new ones join
    (an identical dialog is kept once)."""
    seen, out = set(), []
    for dialog in [*previous, *new]:
        key = json.dumps(dialog["messages"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(dialog)
    return out


def read_pool(path: str | Path) -> list[dict]:
    """The kept dialogs of an earlier rejection run (its folder or its best_samples.jsonl)."""
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; `previous` takes the folder of an earlier rejection run")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- the stage


def _demo_finetune() -> TrainConfig:
    # The SFT recipe (SPEC §6: cosine, wd 0.1, 2 epochs) with the demo's larger LR: a
    # 2.4M-parameter model does not move at 2e-5 in a few dozen steps. stages/sft.paper_train
    # is the paper's. 1e-4 rather than 3e-4: fine-tuning on even gold-picked best-of-8 samples
    # of 1,440 train prompts at 3e-4 cost 0.025 held-out gold helpfulness (recalled facts drift),
    # at 1e-4 +0.002 [-0.015, +0.019].
    return TrainConfig(lr=1e-4, schedule="cosine", warmup_steps=2, min_lr_ratio=0.0, checkpoint_every=0, log_every=5)


@dataclass
class RejectionConfig:
    """Defaults are the CPU demo; configs/rejection/paper.yaml lists the paper's settings."""

    policy: str = ""  # the model sampled and fine-tuned (the SFT model in round 1, then the latest)
    sampler: str = ""  # a (larger) model that samples instead of the policy, which learns from its picks (SPEC §8); empty = the policy
    helpfulness_rm: str = ""  # reward model folder (llamaforge reward --kind helpfulness); "gold" = the gold judges
    safety_rm: str = ""  # reward model folder (--kind safety); empty = helpfulness only
    safety_threshold: float = 0.15  # Rc uses the safety RM below this probability (SPEC §8)
    rejection_samples: int = 4  # K samples per prompt (the paper plots up to 100; demo 4)
    iteration: int = 1  # RLHF round (1-based): picks the temperature
    temperatures: list[float] = field(default_factory=lambda: [1.0, 1.1, 1.2, 1.3])  # per round; the best rises to 1.2-1.3 (SPEC §8)
    prompts: int = 192  # prompts per round (0 = all), drawn from every kind in the world's proportions
    prompt_file: str = ""  # the user's prompts (JSONL with "prompt" or "messages"); empty = the built-in world's
    max_new_tokens: int = 64  # reply length cap
    batch_size: int = 64  # rows decoded together
    previous: list[str] = field(default_factory=list)  # earlier rejection runs whose kept samples stay (SPEC §8)
    world_seed: int = 0  # seed of the built-in world
    world_size: Literal["tiny", "demo", "large"] = "demo"  # size of the built-in world
    seed: int = 0  # prompt draw and sampling
    run: RunConfig = field(default_factory=RunConfig)
    epochs: float = 2.0  # passes over the kept samples in the fine-tune (SPEC §6: 2)
    finetune_batch: int = 8  # packed sequences per fine-tuning step (the paper's SFT: 64)
    train: TrainConfig = field(default_factory=_demo_finetune)  # the SFT loop's optimizer for the fine-tune

    def temperature(self) -> float:
        return self.temperatures[min(self.iteration, len(self.temperatures)) - 1]


def main(argv: list[str] | None = None) -> int:
    """`llamaforge rejection [--config FILE.yaml] [key=value ...]`."""
    return run_cli(RejectionConfig, rejection, argv, "rejection", __doc__)


def run_cli(config_cls, stage_fn, argv: list[str] | None, command: str, doc: str) -> int:
    """The RLHF commands' shared main: parse the config, run the stage, print its effect,
    warnings and output folder; input problems exit 1 with the message."""
    cfg = parse_cli(config_cls, argv, prog=f"llamaforge {command}", description=doc.split("\n\n")[0])
    try:
        result = stage_fn(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"llamaforge {command}: error: {e}", file=sys.stderr)
        return 1
    print(result["summary"]["effect"])
    for warning in result["summary"].get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"output: {result['path']}")
    return 0


def training_prompts(world, n: int, seed: int) -> list[dict]:
    """`n` training prompts of every kind (helpful, adversarial, borderline) in the world's proportions."""
    records = [r for kind in ("helpful", "adversarial", "borderline") for r in world.prompt_records(kind, "train")]
    random.Random(f"rejection/{seed}").shuffle(records)
    return records[:n] if n else records


def read_prompts(path: str | Path) -> list[dict]:
    """User prompts: JSONL rows with "prompt" (one user turn) or "messages" (ending with a user turn)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if "prompt" not in row and "messages" not in row:
            raise ValueError(f"{path} line {i + 1} has neither 'prompt' nor 'messages'")
        row.setdefault("id", f"prompt-{i}")
    return rows


def rejection(cfg: RejectionConfig, *, scorer: Scorer | None = None, world=None, out_dir: str | Path | None = None,
              samples: Sequence[Sequence[Any]] | None = None) -> dict:
    """One round of rejection sampling as `cfg` says; `scorer` replaces the RMs named in `cfg`, and
    `samples` (an earlier round's "samples", same config) are picked from instead of sampling again.
    Returns {"path": the fine-tuned policy folder, "run", "pool": kept dialogs, "summary", "samples"}."""
    from ..checkpoint import load_model
    from .sft import finetune

    started = time.perf_counter()
    if not cfg.policy:
        raise ValueError("policy is required: the model to sample from and fine-tune (the SFT model in round 1)")
    sampler_path = cfg.sampler or cfg.policy
    _, tokenizer = policy_tokenizer(sampler_path)
    if cfg.sampler:
        policy_tokenizer(cfg.policy)  # the policy folder must carry its tokenizer too (the fine-tune reads it)
    scorer = scorer or load_scorer(cfg.helpfulness_rm, cfg.safety_rm, safety_threshold=cfg.safety_threshold)
    run_cfg = cfg.run if out_dir is None else dataclasses.replace(cfg.run, dir=str(out_dir))
    run = Run.start(run_cfg, STAGE, config_to_dict(cfg), seeds={"sampling": cfg.seed}, parent=cfg.policy)
    if cfg.prompt_file:
        records = read_prompts(cfg.prompt_file)
    else:
        if world is None:
            from ..world import World

            world = World.generate(seed=cfg.world_seed, size=cfg.world_size)
        records = training_prompts(world, cfg.prompts, cfg.seed + cfg.iteration)

    sampler = load_model(sampler_path) if samples is None else None
    temperature = cfg.temperature()
    result = best_of_k(sampler, tokenizer, records, scorer, k=cfg.rejection_samples, temperature=temperature,
                       max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + cfg.iteration, batch_size=cfg.batch_size,
                       samples=samples)
    del sampler
    previous = [d for path in cfg.previous for d in read_pool(path)]
    pool = merge_pools(previous, dialogs_of(result["best"]))
    if not pool:
        raise ValueError("no prompts to sample: the prompt file is empty or `prompts` selected none")
    with open(run.path / SAMPLES_FILE, "w") as f:
        for dialog in pool:
            f.write(json.dumps(dialog, ensure_ascii=False) + "\n")
    sampled_time = time.perf_counter() - started
    path = Path(finetune(cfg.policy, pool, run.path / "policy", train=cfg.train, epochs=cfg.epochs,
                         batch_size=cfg.finetune_batch, progress=cfg.run.progress))

    summary = rejection_summary(result, temperature, len(pool), len(previous), time.perf_counter() - started,
                                scorer_name="gold" if cfg.helpfulness_rm == "gold" else "RM")
    if cfg.sampler:
        summary["effect"] = f"sampled by {cfg.sampler}: " + summary["effect"]
    summary["metrics"]["sampling_seconds"] = round(sampled_time, 2)
    write_summary(run.path, summary)
    write_json(run.path / "rewards.json", {"rewards": result["rewards"], "gold": result["gold"]})
    run.update(outputs={"policy": str(path), "samples": len(pool), "sampler": sampler_path})
    run.close("finished")
    return {"path": path, "run": run.path, "pool": pool, "summary": summary, "samples": result["samples"]}


def _agreement(value: float | None) -> str:
    return "" if value is None else f" (the scorer orders sample pairs as the gold judge does {value:.0%} of the time)"


def rejection_summary(result: dict, temperature: float, pool_size: int, previous: int, seconds: float, *,
                      scorer_name: str = "RM") -> dict:
    """summary.json: the max-vs-median curve, gold of kept vs all samples, the pool's size."""
    curve = result["curve"]
    all_gold = [g for row in result["gold"] for g in row]
    kept_gold = [b["gold"] for b in result["best"]]
    K = curve["k"][-1]
    metrics = {
        "temperature": temperature, "k": K, "prompts": len(result["best"]),
        "reward/median_of_k": curve["median"][-1], "reward/max_of_k": curve["max"][-1],
        "gold/all_samples": statistics.fmean(all_gold), "gold/kept": statistics.fmean(kept_gold),
        "kept_finished": statistics.fmean(float(b["finished"]) for b in result["best"]),
        "pool": pool_size, "pool_from_earlier_rounds": previous,
        "scorer_gold_agreement": pairwise_agreement(result["rewards"], result["gold"]),
    }
    effect = (f"best of {K} at T={temperature}: {scorer_name} reward median {curve['median'][-1]:.3f} -> max {curve['max'][-1]:.3f}; "
              f"gold reward of samples {metrics['gold/all_samples']:.3f} -> kept {metrics['gold/kept']:.3f}"
              f"{_agreement(metrics['scorer_gold_agreement'])}; "
              f"fine-tuned on {pool_size} dialogs")
    plots = [{"title": "Rejection sampling: max and median reward over K samples (paper Figure 7)", "kind": "line",
              "xlabel": "samples per prompt (K)", "ylabel": f"reward ({scorer_name}, probability)",
              "series": {"max": {"x": curve["k"], "y": curve["max"]}, "median": {"x": curve["k"], "y": curve["median"]}}}]
    tables = [{"title": "Scorer vs gold judge by prompt group: gold reward of all samples and of the kept ones "
                        "(a scorer that knows nothing keeps the average)",
               "columns": ["group", "prompts", "gold, all samples", "gold, kept", "scorer-gold pair agreement"],
               "rows": selection_by_group(result)},
              {"title": "Kept samples (first 5)", "columns": ["prompt", "reply", "RM reward", "gold"],
               "rows": [[record_dialog(b["record"])[-1]["content"], b["reply"], round(b["reward"], 4), b["gold"]]
                        for b in result["best"][:5]]}]
    return {"stage": STAGE, "effect": effect, "seconds": round(seconds, 2), "metrics": metrics, "tables": tables,
            "plots": plots}
