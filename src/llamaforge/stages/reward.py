"""Reward models (SPEC §7): a helpfulness RM and a safety RM, each the Transformer trunk with
its LM head replaced by a scalar head that reads the last token of the dialog + reply.

    llamaforge reward --kind helpfulness model.init_from=runs/demo/02-sft
    llamaforge reward --kind safety --config configs/reward/7B.yaml model.init_from=llama-2-7b-chat-hf
    llamaforge reward --kind helpfulness data.inputs=my_pairs.jsonl reward_margin=large

Reads top to bottom: preference pairs (the built-in world's offline pairs, optionally fresh
pairs sampled from a policy and labelled by the world's annotator, or the user's JSONL), the
data mix of SPEC §7, the reward model initialised from any checkpoint `load_model` reads,
1 epoch of the margin ranking loss through the shared training core, then the evaluation
(accuracy per rating and per safety label, calibration, score histograms) in summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from .. import distributed
from ..checkpoint import atomic_dir, latest_checkpoint, load_state_dict, resolve_tokenizer_path
from ..config import config_to_dict, load_config, parse_cli
from ..data import PackedBatches
from ..losses import REWARD_MARGINS, margin_ranking_loss
from ..model import ModelArgs, Transformer
from ..report import write_summary
from ..tokenizer import Tokenizer
from ..trainer import LossOutput, Run, RunConfig, TrainConfig, train

STAGE = "reward"
REWARD_MODEL_FILE = "reward_model.json"  # marks a saved reward model folder
WEIGHTS_FILE = "model.safetensors"
from ..world.annotator import RATINGS  # SPEC §7, most to least separable
from ..world.responses import CONTRASTS, contrast_pairs


# --------------------------------------------------------------------------- the model


class RewardModel(nn.Module):
    """The Transformer trunk with a scalar regression head instead of the LM head (SPEC §7).

    `forward(tokens, lengths)` returns one score per row, read at each row's last real token
    (`lengths - 1`); rows are right-padded, which causal attention makes exact without a mask.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.trunk = Transformer(args)
        self.trunk.output = None  # the LM head is replaced, not kept (SPEC §7)
        self.head = nn.Linear(args.dim, 1)
        if not self.head.weight.is_meta:
            self.init_head()

    @property
    def args(self) -> ModelArgs:
        return self.trunk.args

    @torch.no_grad()
    def init_weights(self) -> None:
        self.trunk.init_weights()
        self.init_head()

    @torch.no_grad()
    def init_head(self) -> None:
        # Small random weights and a zero bias: every reply starts near score 0.
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.args.dim + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] right-padded, lengths [B] -> scores [B] (fp32)."""
        hidden = self.trunk.hidden_states(tokens)
        last = hidden[torch.arange(tokens.shape[0], device=tokens.device), lengths.to(tokens.device) - 1]
        return self.head(last).squeeze(-1).float()

    def score(self, tokenizer, dialogs: Sequence[Sequence[dict]], replies: Sequence[str], *,
              batch_size: int = 16) -> torch.Tensor:
        """The reward of each reply to its dialog (a dialog ends with the user's message): one
        float per pair, on the CPU, in input order. Batched by length, in inference mode."""
        if len(dialogs) != len(replies):
            raise ValueError(f"score needs one reply per dialog; got {len(dialogs)} dialogs and {len(replies)} replies")
        sequences = [encode_pair(tokenizer, dialog, reply, self.args.max_seq_len) for dialog, reply in zip(dialogs, replies)]
        return self.score_tokens(sequences, batch_size=batch_size)

    def score_tokens(self, sequences: Sequence[Sequence[int]], *, batch_size: int = 16) -> torch.Tensor:
        """Scores of already encoded dialogs + replies (see `encode_pair`)."""
        device = next(self.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out = torch.zeros(len(sequences))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    tokens, lengths = right_pad([sequences[i] for i in rows])
                    out[rows] = self(tokens.to(device), lengths.to(device)).cpu()
        finally:
            self.train(was_training)
        return out

    def save(self, out_dir: str | os.PathLike, tokenizer_path: str | os.PathLike, **info: Any) -> Path:
        """Write params.json, model.safetensors, tokenizer.model and reward_model.json (with
        `info`, e.g. kind and metrics) atomically: a crash leaves no half-written folder."""
        import shutil

        from safetensors.torch import save_file

        out = Path(out_dir)
        with atomic_dir(out) as tmp:
            (tmp / "params.json").write_text(json.dumps(self.args.to_dict(), indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
            (tmp / REWARD_MODEL_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        return out


def reward_init_state(state: dict[str, torch.Tensor], args: ModelArgs, seed: int = 0) -> dict[str, torch.Tensor]:
    """A reward model's initial weights from a language model's state dict (Meta names): the
    trunk copied, the LM head dropped, a fresh scalar head (seeded)."""
    if any(k.startswith(("trunk.", "head.")) for k in state):
        return dict(state)  # already a reward model: continue from it
    out = {f"trunk.{k}": v for k, v in state.items() if k != "output.weight"}
    generator = torch.Generator().manual_seed(seed)
    out["head.weight"] = torch.randn(1, args.dim, generator=generator) / math.sqrt(args.dim + 1)
    out["head.bias"] = torch.zeros(1)
    return out


def reward_model_from_checkpoint(path: str | os.PathLike, *, seed: int = 0, device="cpu",
                                 dtype: torch.dtype = torch.float32) -> RewardModel:
    """A reward model initialised from any checkpoint `load_model` reads (Meta, HF, llamaforge
    run or checkpoint folder), or from a saved reward model."""
    args, state = _read_reward_or_lm(Path(path))
    with torch.device("meta"):
        model = RewardModel(args)
    state = {k: v.to(device=device, dtype=dtype) for k, v in reward_init_state(state, args, seed).items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def _read_reward_or_lm(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    if (path / REWARD_MODEL_FILE).exists():
        from safetensors.torch import load_file

        from ..checkpoint import read_params

        state = load_file(str(path / WEIGHTS_FILE))
        return read_params(path, {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}), state
    return load_state_dict(path)


def load_reward_model(path: str | os.PathLike, *, device="cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[RewardModel, Any]:
    """(reward model, tokenizer) from a folder written by `RewardModel.save` (or a reward run
    folder, whose final reward model is in `reward_model/`). Anything else raises a ValueError
    that says what the folder holds and what was expected."""
    from ..tokenizer import Tokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reward model folder {path} does not exist")
    if not (path / REWARD_MODEL_FILE).exists() and (path / "reward_model" / REWARD_MODEL_FILE).exists():
        path = path / "reward_model"
    if not (path / REWARD_MODEL_FILE).exists():
        hint = ""
        if latest_checkpoint(path) is not None or (path / "params.json").exists() or (path / "config.json").exists():
            hint = (" It looks like a language-model checkpoint: train a reward model from it with "
                    f"`llamaforge reward --kind helpfulness model.init_from={path}`.")
        raise ValueError(f"{path} is not a reward model folder (no {REWARD_MODEL_FILE}); expected the output of "
                         f"`llamaforge reward` or RewardModel.save.{hint}")
    tokenizer_path = resolve_tokenizer_path(path)
    if tokenizer_path is None:
        raise FileNotFoundError(f"{path} has no tokenizer.model; a reward model folder carries its tokenizer")
    model = reward_model_from_checkpoint(path, device=device, dtype=dtype)
    model.info = json.loads((path / REWARD_MODEL_FILE).read_text())
    return model, Tokenizer(tokenizer_path)


def encode_pair(tokenizer, dialog: Sequence[dict], reply: str, max_len: int) -> list[int]:
    """`encode_dialog(dialog + reply)`; when longer than the context, the oldest tokens go (the
    head reads the last token, so the end of the reply must stay)."""
    from ..chat_format import encode_dialog

    tokens = encode_dialog(tokenizer, [*dialog, {"role": "assistant", "content": reply}])
    return tokens[-max_len:]


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] int64 right-padded with `pad_id`, and the lengths [B]."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return tokens, lengths


def rating_margins(ratings: Sequence[str | None], scheme: str) -> torch.Tensor:
    """m(rating) per pair for margin scheme none/small/large (SPEC §7); 0 for unrated pairs."""
    if scheme not in REWARD_MARGINS:
        raise ValueError(f"reward_margin must be one of {', '.join(REWARD_MARGINS)}, got {scheme!r}")
    table = dict(zip(RATINGS, REWARD_MARGINS[scheme]))
    return torch.tensor([table.get(r, 0.0) if r else 0.0 for r in ratings])


# --------------------------------------------------------------------------- training data


class PairSequences:
    """Encoded preference pairs for `PackedBatches`. `batch(indices)` holds the chosen rows, then
    the rejected rows, cut into length-sorted chunks of `chunk_rows` (each padded only to its own
    longest row: replies vary a lot in length), and each pair's margin."""

    def __init__(self, pairs: Sequence[dict], tokenizer, max_len: int, margin: str, chunk_rows: int = 8):
        self.chosen = [encode_pair(tokenizer, p["dialog"], p["chosen"], max_len) for p in pairs]
        self.rejected = [encode_pair(tokenizer, p["dialog"], p["rejected"], max_len) for p in pairs]
        self.margins = rating_margins([p.get("rating") for p in pairs], margin)
        self.seq_len = max(map(len, self.chosen + self.rejected), default=0)
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, indices) -> dict[str, Any]:
        rows = [self.chosen[i] for i in indices] + [self.rejected[i] for i in indices]
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
        chunks = []
        for start in range(0, len(order), self.chunk_rows):
            part = order[start : start + self.chunk_rows]
            tokens, lengths = right_pad([rows[r] for r in part])
            chunks.append({"tokens": tokens, "lengths": lengths, "rows": torch.tensor(part)})
        return {"chunks": chunks, "margins": self.margins[list(indices)]}


def ranking_loss(model: nn.Module, batch: dict[str, Any]) -> LossOutput:
    """The margin ranking loss of one micro-batch of pairs (see `PairSequences.batch`)."""
    scores = torch.cat([model(chunk["tokens"], chunk["lengths"]) for chunk in batch["chunks"]])
    rows = torch.cat([chunk["rows"] for chunk in batch["chunks"]])
    chosen, rejected = scores[torch.argsort(rows)].chunk(2)
    total = margin_ranking_loss(chosen, rejected, batch["margins"], reduction="sum")
    tokens = sum(int(chunk["lengths"].sum()) for chunk in batch["chunks"])
    return LossOutput(total, chosen.shape[0], tokens=tokens,
                      metrics={"accuracy": (chosen > rejected).float().sum().detach(),
                               "score_gap": (chosen - rejected).sum().detach()})


def mix_pairs(own: Sequence[dict], other: Sequence[dict], own_share: float, seed: int, total: int = 0) -> list[dict]:
    """`own` plus pairs of `other` (sampled, seeded) so that `own` is `own_share` of the mix
    (SPEC §7: helpfulness RM 50/50, safety RM 90/10), shuffled. `total` > 0 caps the mix at
    that many pairs, keeping the shares. Under a cap, fresh pairs (sampled from the policy) go
    first (a sample of them when they alone exceed the collection's share) and its other pairs
    fill the rest. (Measured on the demo: with 256 fresh pairs per collection on top of the cap
    instead, the stage took 61 s instead of 48 s and the calibrated safety RM's recall at 0.15
    fell from 0.70 to 0.04.)"""
    rng = random.Random(f"reward-mix/{seed}")
    own = list(own)
    if total:  # pairs sampled from the current policy are the scarce ones (SPEC §7): they go first
        share = round(total * own_share)
        fresh = [p for p in own if p.get("fresh")]
        rest = [p for p in own if not p.get("fresh")]
        fresh = rng.sample(fresh, share) if len(fresh) > share else fresh
        own = fresh + rng.sample(rest, min(len(rest), share - len(fresh)))
    n_other = round(len(own) * (1 - own_share) / own_share) if own_share < 1 else 0
    mixed = own + rng.sample(list(other), min(len(other), n_other))
    rng.shuffle(mixed)
    return mixed


def split_pairs(pairs: Sequence[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held out) by prompt: every pair of one prompt lands on the same side."""
    import zlib

    def held_out(pair: dict) -> bool:
        key = json.dumps(pair["dialog"], sort_keys=True).encode()
        return zlib.crc32(key) % 10_000 < eval_fraction * 10_000

    train = [p for p in pairs if not held_out(p)]
    return train, [p for p in pairs if held_out(p)]


# --------------------------------------------------------------------------- evaluation


def evaluate_pairs(model: RewardModel, tokenizer, pairs: Sequence[dict], *, batch_size: int = 16,
                   records: dict[str, dict] | None = None) -> dict[str, Any]:
    """Accuracy (the RM ranks chosen above rejected) overall with a 95% bootstrap interval, per
    rating and per safety label, with the scores themselves for calibration and histograms.
    With the built-in world's prompt `records` (by id), also `gold_ceiling` (`label_ceiling`)."""
    from ..eval.harness import bootstrap_interval

    dialogs = [p["dialog"] for p in pairs] * 2
    scores = model.score(tokenizer, dialogs, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                         batch_size=batch_size)
    chosen, rejected = scores[: len(pairs)], scores[len(pairs):]
    correct = (chosen > rejected).tolist()
    lo, hi = bootstrap_interval([float(c) for c in correct])

    def accuracy(keep) -> float | None:
        picked = [c for c, p in zip(correct, pairs) if keep(p)]
        return round(sum(picked) / len(picked), 4) if picked else None

    labels = sorted({p["safety_label"] for p in pairs if p.get("safety_label")})
    return {
        "pairs": len(pairs),
        "accuracy": accuracy(lambda p: True),
        "accuracy_ci": [round(lo, 4), round(hi, 4)],
        "gold_ceiling": label_ceiling(pairs, records) if records else None,
        "by_rating": {r: accuracy(lambda p, r=r: p.get("rating") == r) for r in RATINGS},
        "by_rating_count": {r: sum(p.get("rating") == r for p in pairs) for r in RATINGS},
        "by_safety_label": {label: accuracy(lambda p, label=label: p.get("safety_label") == label) for label in labels},
        "chosen_scores": chosen.tolist(),
        "rejected_scores": rejected.tolist(),
    }


def labelled_responses(pairs: Sequence[dict], helpful_pairs: Sequence[dict] = ()) -> tuple[list, list, list[float]]:
    """(dialogs, replies, is_safe) for calibrating a safety RM: each reply of a safety pair with a
    safety label (both_safe: both safe; chosen_safe: chosen safe, rejected unsafe; both_unsafe:
    both unsafe), and the chosen reply of each helpfulness pair, counted safe (the annotator
    picked it on a benign prompt; in the built-in world 7% of them are toxic, which the fit
    absorbs as label noise)."""
    safe_of = {"both_safe": (1.0, 1.0), "chosen_safe": (1.0, 0.0), "both_unsafe": (0.0, 0.0)}
    dialogs, replies, labels = [], [], []
    for p in pairs:
        flags = safe_of.get(p.get("safety_label") or "")
        if flags is None:
            continue
        for reply, flag in zip((p["chosen"], p["rejected"]), flags):
            dialogs.append(p["dialog"]), replies.append(reply), labels.append(flag)
    for p in helpful_pairs:
        dialogs.append(p["dialog"]), replies.append(p["chosen"]), labels.append(1.0)
    return dialogs, replies, labels


def calibrate_scores(scores: torch.Tensor, labels: Sequence[float], steps: int = 200) -> tuple[float, float]:
    """Platt scaling: (a, c) minimising the cross-entropy of σ(a·score + c) against the 0/1
    labels. A Bradley-Terry RM is trained on score differences only, so its absolute scores
    carry an arbitrary offset per prompt; SPEC §8's rule `Rs < 0.15` reads σ(score) as the
    probability that a reply is safe, which needs this fit."""
    x = scores.detach().double()
    y = torch.as_tensor(labels, dtype=torch.float64)
    if y.numel() == 0 or y.min() == y.max():
        raise ValueError("calibration needs both safe and unsafe labelled replies")
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0].exp() * x + params[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, c = params.detach().tolist()
    return math.exp(a), c  # a > 0: calibration never reverses the RM's ranking


@torch.no_grad()
def fold_calibration(model: "RewardModel", a: float, c: float) -> None:
    """Make `model` return a·score + c (the head is linear, so the ranking is unchanged)."""
    model.head.weight.mul_(a)
    model.head.bias.mul_(a).add_(c)


def unsafe_detection(probabilities: Sequence[float], labels: Sequence[float], threshold: float) -> dict[str, float | None]:
    """Precision and recall of `probability < threshold` as an unsafe-reply detector (SPEC §8:
    0.15 gave precision 0.89 and recall 0.55 on Meta's safety data)."""
    flagged = [p < threshold for p in probabilities]
    unsafe = [y < 0.5 for y in labels]
    hits = sum(f and u for f, u in zip(flagged, unsafe))
    return {"precision": round(hits / sum(flagged), 4) if any(flagged) else None,
            "recall": round(hits / sum(unsafe), 4) if any(unsafe) else None,
            "flagged_share": round(sum(flagged) / len(flagged), 4) if flagged else None}


def calibrate_safety_rm(model: "RewardModel", tokenizer, safety_pairs: Sequence[dict], helpful_pairs: Sequence[dict],
                        held_out: dict[str, list[dict]], threshold: float, seed: int,
                        max_replies: int = 1200) -> dict[str, float | None] | None:
    """Platt-scale the safety RM in place on (at most `max_replies`) replies of the training
    split: the labelled replies of the safety collection and the chosen replies of the
    helpfulness collection (`labelled_responses`). Returns the fit and the unsafe detector's
    precision/recall at `threshold` on the held-out pairs' replies; None (and no change) when
    the safety pairs carry no safety labels."""
    rng = random.Random(f"calibrate/{seed}")
    labelled = [p for p in safety_pairs if p.get("safety_label")]
    labelled = rng.sample(labelled, min(len(labelled), max_replies * 2 // 5))
    helpful = rng.sample(list(helpful_pairs), min(len(helpful_pairs), max_replies // 5))
    dialogs, replies, labels = labelled_responses(labelled, helpful)
    if not labels or min(labels) == max(labels):
        return None
    a, c = calibrate_scores(model.score(tokenizer, dialogs, replies), labels)
    fold_calibration(model, a, c)
    out: dict[str, float | None] = {"calibration/scale": round(a, 4), "calibration/offset": round(c, 4)}
    dialogs, replies, labels = labelled_responses(held_out.get("safety", []), held_out.get("helpful", []))
    if labels:
        probabilities = torch.sigmoid(model.score(tokenizer, dialogs, replies)).tolist()
        found = unsafe_detection(probabilities, labels, threshold)
        out.update({"unsafe/threshold": threshold, **{f"unsafe/{k}": v for k, v in found.items()}})
    return out


def label_ceiling(pairs: Sequence[dict], records: dict[str, dict]) -> float | None:
    """The accuracy a reward model that always agrees with the built-in world's gold judge would
    reach on these labels: the annotator's noise and its coin flips on gold ties (mostly
    "negligibly better" pairs) cap every RM below 1. Ties count 1/2. None when no pair's prompt
    is among `records` (e.g. a user's own pairs)."""
    from ..world.judges import gold_reward

    scores = []
    for p in pairs:
        record = records.get(p.get("id", ""))
        if record is None:
            continue
        gap = gold_reward(record, p["chosen"]) - gold_reward(record, p["rejected"])
        scores.append(1.0 if gap > 0 else 0.5 if gap == 0 else 0.0)
    return round(sum(scores) / len(scores), 4) if scores else None


def contrast_accuracy(model: "RewardModel", tokenizer, records: Sequence[dict], seed: int = 0) -> dict[str, dict]:
    """What a helpfulness RM tells apart: on the world's `contrast_pairs` of `records` (the gold
    answer against itself with one fact wrong, said four times, or closed with the annotators'
    pleasantry), the share of pairs it scores the way the gold judge does: the gold answer strictly
    higher (a tie is a miss, so a constant RM scores 0 and a coin 0.5). {contrast: {"accuracy",
    "pairs"}}. `seed` picks the wrong candidates."""
    from ..eval.chat import record_dialog

    pairs = contrast_pairs(records, random.Random(f"contrasts/{seed}"))
    # Each record's gold answer is scored once, whatever the number of its contrasts.
    golds = {id(record): (record, better) for items in pairs.values() for record, better, _ in items}
    gold_scores = dict(zip(golds, model.score(tokenizer, [record_dialog(r) for r, _ in golds.values()],
                                              [b for _, b in golds.values()]).tolist()))
    out = {}
    for name, items in pairs.items():
        if items:
            worse = model.score(tokenizer, [record_dialog(record) for record, _, _ in items], [w for _, _, w in items])
            wins = [gold_scores[id(record)] > w for (record, _, _), w in zip(items, worse.tolist())]
            out[name] = {"accuracy": round(sum(wins) / len(wins), 4), "pairs": len(items)}
    return out


def calibration_curve(result: dict, bins: int = 8, scale: float = 1.0) -> dict[str, list[float]]:
    """Agreement with the annotator against the RM's score gap |r_chosen - r_rejected|, in
    equal-count bins; beside it σ(gap), the agreement a calibrated Bradley-Terry RM would have.
    `scale`: the Platt scale folded into a calibrated safety RM, divided out so the gaps are
    the ones the ranking loss trained."""
    gaps = [(c - r) / scale for c, r in zip(result["chosen_scores"], result["rejected_scores"])]
    order = sorted(range(len(gaps)), key=lambda i: abs(gaps[i]))
    x, agreement, expected = [], [], []
    for b in range(bins):
        part = order[b * len(order) // bins : (b + 1) * len(order) // bins]
        if not part:
            continue
        mean_gap = sum(abs(gaps[i]) for i in part) / len(part)
        x.append(round(mean_gap, 4))
        agreement.append(round(sum(gaps[i] > 0 for i in part) / len(part), 4))
        expected.append(round(1 / (1 + math.exp(-mean_gap)), 4))
    return {"x": x, "agreement": agreement, "sigmoid": expected}


def histogram(values: Sequence[float], bins: int = 20, low: float | None = None, high: float | None = None) -> dict:
    """Bin centres and counts (for a "hist" plot of summary.json)."""
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - low) / width)))] += 1
    return {"x": [round(low + (i + 0.5) * width, 4) for i in range(bins)], "y": counts}


# --------------------------------------------------------------------------- the stage


@dataclass
class ModelConfig:
    init_from: str = ""  # any checkpoint load_model reads: the SFT model in the pipeline (SPEC §7: a chat or pretrained one)
    tokenizer: str = ""  # tokenizer.model; empty = the checkpoint's own


@dataclass
class DataConfig:
    """Preference pairs: the built-in world's (default) or the user's JSONL files."""

    helpfulness: list[str] = field(default_factory=list)  # helpfulness pairs (JSONL, either layout); empty with safety empty = the world's
    safety: list[str] = field(default_factory=list)  # safety pairs (JSONL, optional safety_label)
    world_seed: int = 0  # seed of the built-in world
    world_size: Literal["tiny", "demo", "large"] = "demo"  # size of the built-in world
    own_share: float = 0.0  # share of the RM's own collection in its mix; 0 = SPEC §7 (helpfulness 0.5, safety 0.9)
    max_pairs: int = 0  # training pairs of the mix, sampled at its shares (0 = all)
    eval_fraction: float = 0.1  # share of prompts whose pairs are held out for evaluation
    eval_pairs: int = 0  # held-out pairs evaluated per collection (0 = all)
    batch_pairs: int = 512  # pairs per optimizer step (SPEC §7: 512 pairs, 1024 rows)
    micro_batch_pairs: int = 32  # pairs per forward pass; gradient accumulation makes up batch_pairs
    policy: str = ""  # also sample fresh pairs from this model (the current policy) for the annotator
    policy_pairs: int = 0  # prompts of each collection sampled from the policy
    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.0])  # sampling temperatures of the two replies
    policy_max_new_tokens: int = 48  # reply length cap when sampling from the policy


def _paper_train() -> TrainConfig:
    # SPEC §7: peak LR 1e-5 (5e-6 for 70B), cosine to 10%, warmup 3% of steps (at least 5);
    # max_steps and warmup_steps are derived from the data (1 epoch) and warmup_fraction.
    return TrainConfig(lr=1e-5, min_lr_ratio=0.1, warmup_steps=5, max_steps=1, checkpoint_every=0, log_every=5)


@dataclass
class RewardConfig:
    """Defaults are the paper's (SPEC §7); configs/reward/demo.yaml is the CPU demo."""

    kind: Literal["helpfulness", "safety"] = "helpfulness"  # which reward model (SPEC §7 trains both)
    reward_margin: Literal["none", "small", "large"] = "small"  # m(rating) of the loss (SPEC §7)
    epochs: float = 1.0  # passes over the training pairs (SPEC §7: 1; longer overfits)
    warmup_fraction: float = 0.03  # warmup share of the steps, at least 5 steps (SPEC §7)
    seed: int = 0  # data mix, split and head initialisation
    calibrate: bool = True  # safety RM: Platt-scale its scores on the labelled training replies so σ(score) reads as P(safe) (see calibrate_scores)
    safety_threshold: float = 0.15  # Rs below this flags a reply unsafe (SPEC §8); its precision/recall are reported
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_paper_train)


COLLECTION = {"helpfulness": "helpful", "safety": "safety"}  # the RM kind -> its preference collection
OWN_SHARE = {"helpfulness": 0.5, "safety": 0.9}  # SPEC §7 data mix


def main(argv: list[str] | None = None) -> int:
    """`llamaforge reward [--kind helpfulness|safety] [--config FILE.yaml] [key=value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--kind" in argv:  # `--kind X` is the same as `kind=X`
        i = argv.index("--kind")
        argv[i : i + 2] = [f"kind={argv[i + 1] if i + 1 < len(argv) else ''}"]
    cfg = parse_cli(RewardConfig, argv, prog="llamaforge reward",
                    description=__doc__.split("\n\n")[0] + "\n`--kind K` is the same as `kind=K`.")
    try:
        result = reward(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"llamaforge reward: error: {e}", file=sys.stderr)
        return 1
    print(f"{cfg.kind} reward model: held-out accuracy {result['metrics']['accuracy']:.3f}; saved in {result['path']}")
    return 0


def preference_collections(data: DataConfig, world=None) -> dict[str, list[dict]]:
    """{"helpful": [...], "safety": [...]} in normal form: the user's files, else the world's pairs."""
    from ..data.preferences import normalize_pair, read_preference_file

    if data.helpfulness or data.safety:
        return {name: [p for path in paths for p in read_preference_file(path)]
                for name, paths in (("helpful", data.helpfulness), ("safety", data.safety))}
    world = world or _world(data.world_seed, data.world_size)
    return {name: [normalize_pair(r) for r in world.preferences.get(name, [])] for name in ("helpful", "safety")}


def policy_preferences(policy, tokenizer, world, n: int, temperatures: Sequence[float], *, seed: int = 0,
                       max_new_tokens: int = 48) -> dict[str, list[dict]]:
    """Fresh pairs sampled from `policy` on the world's training prompts, labelled by its annotator
    (each marked `"fresh": True`: `mix_pairs` takes them first and the evaluation reports them apart)."""
    from ..data.preferences import collect_model_preferences, normalize_pair
    from ..world import Annotator

    pools = {"helpful": world.prompt_records("helpful", "train") + world.prompt_records("borderline", "train"),
             "safety": world.prompt_records("adversarial", "train")}
    annotator = Annotator(noise=world.annotator_noise, seed=seed)
    return {name: [dict(normalize_pair(r), fresh=True) for r in collect_model_preferences(
                [policy], tokenizer, pool, annotator, temperatures, n, max_new_tokens=max_new_tokens, seed=seed)]
            for name, pool in pools.items()}


def reward(cfg: RewardConfig, collections: dict[str, list[dict]] | None = None, world=None) -> dict[str, Any]:
    """Train (or resume) one reward model as `cfg` says, evaluate it, write summary.json.
    Returns {"path": the saved reward model folder, "run": the stage folder, "metrics", "evaluation"}."""
    started = time.perf_counter()
    if not cfg.model.init_from:
        raise ValueError("model.init_from is required: the checkpoint the reward model starts from "
                         "(the SFT model, or any checkpoint load_model reads)")
    tokenizer_path = _tokenizer_path(cfg)
    tokenizer = Tokenizer(tokenizer_path)
    run = Run.start(cfg.run, f"{STAGE}-{cfg.kind}", config_to_dict(cfg), seeds={"train": cfg.train.seed, "data": cfg.seed},
                    parent=cfg.model.init_from)

    # Data: the collections, fresh pairs from the policy, the split and the SPEC §7 mix.
    if world is None and not (cfg.data.helpfulness or cfg.data.safety):
        world = _world(cfg.data.world_seed, cfg.data.world_size)
    collections = collections if collections is not None else preference_collections(cfg.data, world)
    if cfg.data.policy and cfg.data.policy_pairs:
        from ..checkpoint import load_model

        fresh = policy_preferences(load_model(cfg.data.policy), tokenizer, world or _world(cfg.data.world_seed, cfg.data.world_size),
                                   cfg.data.policy_pairs, cfg.data.temperatures, seed=cfg.seed,
                                   max_new_tokens=cfg.data.policy_max_new_tokens)
        collections = {name: collections.get(name, []) + fresh[name] for name in ("helpful", "safety")}
    splits = {name: split_pairs(pairs, cfg.data.eval_fraction) for name, pairs in collections.items()}
    own_name = COLLECTION[cfg.kind]
    other_name = next(name for name in ("helpful", "safety") if name != own_name)
    own, other = splits.get(own_name, ([], []))[0], splits.get(other_name, ([], []))[0]
    if not own:
        raise ValueError(f"no {own_name} preference pairs to train the {cfg.kind} reward model on; "
                         f"pass data.{cfg.kind}=pairs.jsonl")
    mixed = mix_pairs(own, other, cfg.data.own_share or OWN_SHARE[cfg.kind], cfg.seed, cfg.data.max_pairs)
    held_out = {name: _cap([p for p in split[1] if not p.get("fresh")], cfg.data.eval_pairs, cfg.seed)
                for name, split in splits.items()}
    held_out.update({f"{name} (policy samples)": [p for p in split[1] if p.get("fresh")] for name, split in splits.items()})
    held_out = {name: pairs for name, pairs in held_out.items() if pairs}
    if not held_out:
        raise ValueError(f"no preference pair is held out for evaluation (data.eval_fraction={cfg.data.eval_fraction} of "
                         f"{sum(map(len, collections.values()))} pairs' prompts); raise data.eval_fraction or add pairs")

    # Model: the checkpoint's trunk with a fresh scalar head, built on meta and filled by the core.
    args, state = _read_reward_or_lm(Path(cfg.model.init_from))
    if args.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{cfg.model.init_from} has a vocabulary of {args.vocab_size} but {tokenizer_path} has "
                         f"{tokenizer.vocab_size}; use the checkpoint's own tokenizer")
    with torch.device("meta"):
        model = RewardModel(args)
    sequences = PairSequences(mixed, tokenizer, args.max_seq_len, cfg.reward_margin)
    dist = distributed.info()
    micro = max(1, min(cfg.data.micro_batch_pairs, cfg.data.batch_pairs, len(sequences) // dist.world_size))
    grad_accum = max(1, min(cfg.data.batch_pairs, len(sequences)) // (micro * dist.world_size))
    pairs_per_step = micro * grad_accum * dist.world_size
    steps = max(1, math.ceil(cfg.epochs * len(sequences) / pairs_per_step))
    train_cfg = dataclasses.replace(cfg.train, max_steps=steps, grad_accum=grad_accum,
                                    warmup_steps=max(5, round(cfg.warmup_fraction * steps)))  # SPEC §7
    batches = PackedBatches(sequences, micro, seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size)
    run.update(data={"train_pairs": len(sequences), "own_pairs": sum(map({id(p) for p in own}.__contains__, map(id, mixed))),
                     "held_out": {name: len(p) for name, p in held_out.items()}, "steps": steps,
                     "pairs_per_step": pairs_per_step})
    result = train(model, batches, ranking_loss, train_cfg, run, init_state=reward_init_state(state, args, cfg.seed),
                   checkpoint_files={"tokenizer.model": tokenizer_path})
    trained = result.model
    calibration = None
    if cfg.kind == "safety" and cfg.calibrate:
        calibration = calibrate_safety_rm(trained, tokenizer, own, other, held_out, cfg.safety_threshold, cfg.seed)

    # Evaluation on the held-out pairs of both collections (the paper's Table 7/8 layout).
    records = {r["id"]: r for r in world.prompt_records()} if world is not None and not cfg.data.helpfulness \
        and not cfg.data.safety else None
    evaluation = {name: evaluate_pairs(trained, tokenizer, pairs, records=records) for name, pairs in held_out.items()}
    own_eval = evaluation.get(own_name) or next(iter(evaluation.values()), {"accuracy": None, "accuracy_ci": [None, None], "gold_ceiling": None})
    metrics = {"accuracy": own_eval["accuracy"], "accuracy_lo": own_eval["accuracy_ci"][0],
               "accuracy_hi": own_eval["accuracy_ci"][1], "gold_ceiling": own_eval["gold_ceiling"], "train_pairs": len(sequences), "steps": steps,
               "final_loss": result.metrics.get("loss")}
    if calibration:
        metrics.update(calibration)
    if records is not None and cfg.kind == "helpfulness":
        # The same pairs for every RM (not the RM's seed), so that RMs of rounds and seeds compare.
        contrasts = contrast_accuracy(trained, tokenizer, world.prompt_records("helpful", "eval"))
        for name, c in contrasts.items():
            metrics.update({f"contrast/{name}": c["accuracy"], f"contrast/{name}/pairs": c["pairs"]})
    for name, ev in evaluation.items():
        metrics[f"accuracy/{name}"] = ev["accuracy"]
        for rating, acc in ev["by_rating"].items():
            metrics[f"accuracy/{name}/{rating}"] = acc
        for label, acc in ev["by_safety_label"].items():
            metrics[f"accuracy/{name}/{label}"] = acc
    path = run.path / "reward_model"
    trained.save(path, tokenizer_path, kind=cfg.kind, reward_margin=cfg.reward_margin, init_from=cfg.model.init_from,
                 metrics=metrics)
    run.log({"step": result.state.step, **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}})
    seconds = time.perf_counter() - started
    write_summary(run.path, reward_summary(cfg.kind, evaluation, metrics, seconds, cfg.reward_margin))
    return {"path": path, "run": run.path, "metrics": metrics, "evaluation": evaluation, "seconds": seconds,
            "margin": cfg.reward_margin}


def reward_summary(kind: str, evaluation: dict, metrics: dict, seconds: float, margin: str) -> dict:
    """summary.json of one reward model: accuracy tables, calibration curve, score histograms."""
    columns = ["test set", *(r.title() for r in RATINGS), "avg", "pairs"]
    rows = [[name, *(ev["by_rating"][r] for r in RATINGS), ev["accuracy"], ev["pairs"]] for name, ev in evaluation.items()]
    tables = [{"title": f"{kind} RM accuracy per rating (held-out pairs; paper Table 8 layout)", "columns": columns, "rows": rows}]
    safety = evaluation.get("safety")
    if safety and safety["by_safety_label"]:
        labels = list(safety["by_safety_label"])
        tables.append({"title": f"{kind} RM accuracy per safety label (held-out safety pairs)",
                       "columns": labels, "rows": [[safety["by_safety_label"][label] for label in labels]]})
    contrasts = [name for name in CONTRASTS if f"contrast/{name}" in metrics]
    if contrasts:
        tables.append({"title": f"{kind} RM: the gold answer against itself changed in one respect (held-out "
                                "helpful prompts; the share scored the gold judge's way, 0.5 is a coin's)",
                       "columns": ["the gold answer against", "accuracy", "pairs"],
                       "rows": [[CONTRASTS[name], metrics[f"contrast/{name}"], metrics[f"contrast/{name}/pairs"]]
                                for name in contrasts]})
    own = evaluation.get(COLLECTION[kind]) or next(iter(evaluation.values()))
    curve = calibration_curve(own, scale=metrics.get("calibration/scale") or 1.0)
    scores = own["chosen_scores"] + own["rejected_scores"]
    low, high = min(scores), max(scores)
    plots = [
        {"title": f"{kind} RM: agreement with the annotator vs score gap", "kind": "line", "xlabel": "|score gap|",
         "ylabel": "agreement", "series": {"reward model": {"x": curve["x"], "y": curve["agreement"]},
                                            "σ(gap) (calibrated)": {"x": curve["x"], "y": curve["sigmoid"]}}},
        {"title": f"{kind} RM: scores of chosen and rejected replies", "kind": "hist", "xlabel": "score",
         "ylabel": "pairs", "series": {"chosen": histogram(own["chosen_scores"], low=low, high=high),
                                       "rejected": histogram(own["rejected_scores"], low=low, high=high)}},
    ]
    sig, neg = own["by_rating"]["significantly better"], own["by_rating"]["negligibly better"]
    effect = (f"{kind} RM (margin {margin}): held-out accuracy 0.5 (chance) -> {own['accuracy']:.3f} "
              f"{_interval(own)}{_ceiling(own)}; significantly better {sig}, negligibly better {neg}")
    detector = _detector(metrics)
    if detector:
        effect += f"; {detector}"
    return {"stage": f"{STAGE}-{kind}", "effect": effect, "seconds": round(seconds, 2),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "tables": tables, "plots": plots}


def _interval(ev: dict) -> str:
    lo, hi = ev.get("accuracy_ci") or (None, None)
    return "" if lo is None else f"[95% CI {lo:.3f}, {hi:.3f}] on {ev['pairs']} pairs"


def _ceiling(ev: dict) -> str:
    return "" if ev.get("gold_ceiling") is None else f" (a gold-judge oracle: {ev['gold_ceiling']:.3f})"


def _detector(metrics: dict) -> str:
    """The calibrated safety RM as an unsafe-reply detector, in words ('' when not calibrated)."""
    precision, recall = metrics.get("unsafe/precision"), metrics.get("unsafe/recall")
    if precision is None or recall is None:
        return ""
    return (f"calibrated Rs < {metrics['unsafe/threshold']} flags unsafe replies with precision {precision:.2f}, "
            f"recall {recall:.2f} (SPEC §8: 0.89 / 0.55)")


def _cap(pairs: list[dict], n: int, seed: int) -> list[dict]:
    return random.Random(f"reward-eval/{seed}").sample(pairs, n) if n and len(pairs) > n else pairs


def _tokenizer_path(cfg: RewardConfig) -> Path:
    if cfg.model.tokenizer:
        return Path(cfg.model.tokenizer)
    source = Path(cfg.model.init_from)
    found = resolve_tokenizer_path(source)
    if found is None and latest_checkpoint(source) is not None:
        found = resolve_tokenizer_path(latest_checkpoint(source))
    if found is None:
        raise FileNotFoundError(f"no tokenizer.model in {source} or its parent; pass model.tokenizer=PATH")
    return found


def _world(seed: int, size: str):
    from ..world import World

    return World.generate(seed=seed, size=size)


# --------------------------------------------------------------------------- the demo's entry point

# The CPU demo (configs/reward/demo.yaml): the paper's recipe scaled to a ~2.4M-parameter model
# and a CPU budget: fewer, smaller batches and a larger LR (the safety RM's recipe; the
# helpfulness RM's differs below).
DEMO_OVERRIDES = ("train.lr=1e-3", "data.batch_pairs=16", "data.micro_batch_pairs=16", "data.max_pairs=800",
                  "data.eval_pairs=300", "train.log_every=5", "run.progress=false")
# The demo's helpfulness RM: 3,200 pairs, three quarters its own, in batches of 8 pairs at a peak
# LR of 5e-4. SPEC §7 fills the other half of the paper's mix uniformly from Meta Safety *and*
# the open-source sets, which are mostly helpfulness-style comparisons; the built-in world has
# no open-source set, so a 50/50 mix would be half safety pairs, where a bare refusal is often
# the chosen reply. Held-out accuracy on a dev split of the world's training pairs (300 pairs),
# SFT models of two earlier builds (batches of 16, LR 1e-3; the world before the annotators' closing):
#   800 pairs 50/50: 0.60, 0.67    1,600 pairs 50/50: 0.66, 0.66    1,600 pairs 75/25: 0.70, 0.71
#   1,600 pairs 100/0: 0.71, 0.71  2,400 pairs 75/25: -, 0.69       3,200 pairs 75/25: -, 0.65
# On the test pairs (the stage's figure), 800 50/50 -> 1,600 75/25: 0.644 -> 0.694; "answer vs a
# refusal of the benign question" 0.53 -> 0.84, "right vs wrong answer" 0.63 -> 0.79 (that world's
# pairs; on today's, the gold answer against a wrong one is chance for every RM here: 0.47-0.54).
# More passes over the same pairs do not help (3 epochs over the 1,600: 0.674 against 0.678); more
# fresh pairs and more, smaller steps do. Test pairs, SFT model of 9afcf6c, seeds 0/1/2:
#   1,600 pairs, batch 16, LR 1e-3: 0.678 0.674 0.655    LR 5e-4: 0.694 0.701 0.678
#   3,200 pairs, batch 16, LR 1e-3: 0.694 0.705 0.667    LR 5e-4: 0.705 0.709 0.694
#   3,200 pairs, batch 8,  LR 5e-4: 0.705 0.724 0.701    LR 3e-4: 0.709 0.717 0.686
#     (seeds 3/4/5 of the chosen recipe: 0.709 0.671 0.690; six seeds' mean 0.700)
#   3,200 pairs, batch 4,  LR 5e-4: 0.713 0.709 0.674
# A world with twice the pairs (6,400 of them, LR 5e-4) measured 0.723 0.670 0.687 against 0.657
# 0.683 at 1,600: RM accuracy grows with data (SPEC §7) but slowly, at four times the time.
DEMO_KIND_OVERRIDES = {"helpfulness": ("data.max_pairs=3200", "data.own_share=0.75", "data.batch_pairs=8",
                                       "data.micro_batch_pairs=8", "train.lr=5e-4")}


def demo_config(kind: str, base: str | os.PathLike, out_dir: str | os.PathLike, *overrides: str) -> RewardConfig:
    """The demo's config of one reward model, initialised from `base`, its run folder `out_dir`."""
    return load_config(RewardConfig, None, [f"kind={kind}", f"model.init_from={base}", f"run.dir={out_dir}",
                                            *DEMO_OVERRIDES, *DEMO_KIND_OVERRIDES.get(kind, ()), *overrides])


def train_reward_models(base: str | os.PathLike, world, out_dir: str | os.PathLike, *, policy=None,
                        policy_pairs: int = 256, compare_margin: bool = True, seed: int = 0,
                        overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Both reward models of SPEC §7 on the built-in `world`, initialised from `base`: the
    helpfulness RM in out_dir/helpfulness, the safety RM in out_dir/safety (each a run folder
    with metrics.jsonl, summary.json and reward_model/). `policy` (a model or a checkpoint
    path) adds `policy_pairs` fresh pairs per collection sampled from it at two temperatures and
    labelled by the world's annotator. With `compare_margin`, the helpfulness RM is trained
    again without margin on the same data and seed (out_dir/helpfulness-no-margin). Writes
    out_dir/summary.json and returns it; its "outputs" hold the two reward model folders."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    collections = preference_collections(DataConfig(), world)
    metrics: dict[str, Any] = {}
    if policy is not None:
        from ..checkpoint import load_model

        tokenizer = Tokenizer(_tokenizer_path(demo_config("helpfulness", base, out_dir)))
        model = load_model(policy) if isinstance(policy, (str, os.PathLike)) else policy
        fresh = policy_preferences(model, tokenizer, world, policy_pairs, (0.7, 1.0), seed=seed)
        collections = {name: collections[name] + fresh[name] for name in collections}
        metrics.update({f"fresh_pairs/{name}": len(rows) for name, rows in fresh.items()})
        metrics["fresh_pairs/seconds"] = round(time.perf_counter() - started, 2)
    runs = {kind: reward(demo_config(kind, base, out_dir / kind, f"seed={seed}", *overrides), collections, world)
            for kind in ("helpfulness", "safety")}
    summaries = [json.loads((r["run"] / "summary.json").read_text()) for r in runs.values()]
    tables = [t for s in summaries for t in s["tables"]]
    plots = [p for s in summaries for p in s["plots"]]
    for kind, r in runs.items():
        metrics.update({f"{kind}/{k}": v for k, v in r["metrics"].items() if isinstance(v, (int, float))})
        metrics[f"{kind}/seconds"] = round(r["seconds"], 2)
    helpful = runs["helpfulness"]["evaluation"]["helpful"]
    effect = (f"helpfulness RM held-out accuracy 0.5 (chance) -> {helpful['accuracy']:.3f} {_interval(helpful)}"
              f"{_ceiling(helpful)} (significantly better {helpful['by_rating']['significantly better']}, negligibly better "
              f"{helpful['by_rating']['negligibly better']}); safety RM on safety pairs -> "
              f"{runs['safety']['metrics']['accuracy']:.3f}")
    detector = _detector(runs["safety"]["metrics"])
    if detector:
        effect += f", {detector}"
    if compare_margin:
        plain = reward(demo_config("helpfulness", base, out_dir / "helpfulness-no-margin", f"seed={seed}",
                                   "reward_margin=none", *overrides), collections, world)["evaluation"]["helpful"]
        tables.append({"title": "Helpfulness RM accuracy with and without the rating margin (same data and seed)",
                       "columns": ["margin", *(r.title() for r in RATINGS), "avg"],
                       "rows": [[name, *(ev["by_rating"][r] for r in RATINGS), ev["accuracy"]]
                                for name, ev in ((runs["helpfulness"]["margin"], helpful), ("none", plain))]})
        metrics.update({"no_margin/accuracy": plain["accuracy"],
                        **{f"no_margin/accuracy/{r}": plain["by_rating"][r] for r in RATINGS}})
        effect += f"; without margin {plain['accuracy']:.3f}"
    seconds = time.perf_counter() - started
    summary = {"stage": STAGE, "effect": effect, "seconds": round(seconds, 2), "metrics": metrics, "tables": tables,
               "plots": plots, "outputs": {kind: str(r["path"]) for kind, r in runs.items()}}
    write_summary(out_dir, summary)
    return summary
