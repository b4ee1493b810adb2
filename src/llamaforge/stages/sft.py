"""Supervised fine-tuning (SPEC §6): next-token loss on the assistant's answers only.

    llamaforge sft base=runs/demo/01-pretrain                      # the built-in world's dialogs
    llamaforge sft base=llama-2-7b-hf data.dialogs=my_dialogs.jsonl --config configs/sft/paper.yaml

Dialogs are `{"messages": [{"role", "content"}, ...]}` records ending with the assistant (an
optional `"loss": false` on an assistant message gives that answer no loss: Ghost Attention's
earlier turns, SPEC §9). Each dialog is encoded by `chat_format` exactly as the chat and the
server encode prompts; the loss mask comes from the prompt/answer token segments, never from
searching strings. Dialogs are packed several to a sequence, as the paper concatenates its
training set (SPEC §6); each starts with BOS and the loss never crosses a boundary, but
attention does (as in the paper's packing), which is what makes packing cheap.

Rejection sampling, GAtt and context distillation are data generators: their dialogs train
through `finetune`, the one SFT loop.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..chat_format import ChatFormatError, assistant_mask, encode_dialog_segments, validate_dialog
from ..config import config_to_dict, parse_cli
from ..data import PackedBatches
from ..model import IGNORE_INDEX, Transformer
from ..trainer import Run, RunConfig, TrainConfig, TrainResult, causal_lm_loss, evaluate
from ..trainer import train as train_loop

STAGE = "sft"


def paper_train() -> TrainConfig:
    """SPEC §6: cosine from 2e-5, weight decay 0.1, batch 64 x 4096 tokens, 2 epochs (set by `epochs`)."""
    return TrainConfig(lr=2e-5, schedule="cosine", warmup_steps=0, min_lr_ratio=0.0, weight_decay=0.1,
                       checkpoint_every=500, log_every=10)


def demo_train() -> TrainConfig:
    # The demo preset (2.4M parameters) needs a far larger rate than a 7B model to move in
    # a few dozen steps; everything else is the paper's recipe.
    return dataclasses.replace(paper_train(), lr=1e-3, warmup_steps=5, checkpoint_every=40, log_every=5)


@dataclass
class SFTData:
    dialogs: str = ""  # messages JSONL; empty = the built-in world's SFT dialogs
    world_seed: int = 0  # the built-in world's seed (when dialogs is empty)
    world_size: Literal["tiny", "demo", "large"] = "demo"  # the built-in world's size
    seq_len: int = 256  # tokens per packed sequence (SPEC §6: 4096)
    batch_size: int = 16  # sequences per micro-batch (SPEC §6: 64 sequences of 4096)
    pack: bool = True  # several dialogs per sequence (SPEC §6); False = one dialog per row, padded
    overlong: Literal["truncate", "drop"] = "truncate"  # dialogs longer than seq_len: cut at seq_len, or skip
    epochs: float = 2.0  # passes over the dialogs (SPEC §6); sets train.max_steps


@dataclass
class SFTConfig:
    base: str = ""  # the checkpoint to fine-tune (Meta, HF or llamaforge run folder); it must carry its tokenizer
    tokenizer: str = ""  # SentencePiece model; empty = the one in `base`
    run: RunConfig = field(default_factory=RunConfig)
    data: SFTData = field(default_factory=SFTData)
    train: TrainConfig = field(default_factory=demo_train)


# --------------------------------------------------------------------------- data


def encode_example(tok, messages: Sequence[dict]) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask) of one training dialog: the mask is true on the answers' tokens
    (each with its EOS) except answers marked `"loss": false`."""
    validate_dialog(messages, for_prompt=False)
    answers = [m for m in messages if m["role"] == "assistant"]
    segments = encode_dialog_segments(tok, messages)
    trained = {turn for turn, m in enumerate(answers) if m.get("loss", True)}
    ids = [t for s in segments for t in s.tokens]
    return ids, assistant_mask(segments, turns=trained)


@dataclass
class PackStats:
    dialogs: int = 0
    truncated: int = 0
    dropped: int = 0  # too long (with overlong="drop") or left with no answer token after truncation
    sequences: int = 0
    tokens: int = 0
    loss_tokens: int = 0


class PackedExamples:
    """Training rows of `seq_len` inputs and targets (IGNORE_INDEX where there is no loss),
    indexable like `data.PackedSequences`, so `data.PackedBatches` shuffles and resumes them."""

    def __init__(self, examples: Sequence[tuple[list[int], list[bool]]], seq_len: int, *, pack: bool = True,
                 overlong: str = "truncate", pad_id: int = 0):
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
        self.seq_len, self.stats = seq_len, PackStats(dialogs=len(examples))
        width = seq_len + 1  # a row of seq_len inputs needs one more token for the last target
        rows: list[tuple[list[int], list[int]]] = []
        tokens: list[int] = []
        labels: list[int] = []
        for ids, mask in examples:
            if len(ids) > width:
                if overlong == "drop":
                    self.stats.dropped += 1
                    continue
                ids, mask = ids[:width], mask[:width]
                self.stats.truncated += 1
            if not any(mask[1:]):  # nothing left to learn from
                self.stats.dropped += 1
                continue
            # The label of a token is itself when it gets loss; shifting happens per row.
            example_labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
            if not pack or len(tokens) + len(ids) > width:
                if tokens:
                    rows.append((tokens, labels))
                tokens, labels = [], []
            tokens, labels = tokens + ids, labels + example_labels
        if tokens:
            rows.append((tokens, labels))
        self.inputs = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
        self.targets = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
        for i, (row_tokens, row_labels) in enumerate(rows):
            n = len(row_tokens) - 1
            self.inputs[i, :n] = row_tokens[:-1]
            self.targets[i, :n] = row_labels[1:]
        self.stats.sequences = len(rows)
        self.stats.tokens = int(sum(len(r[0]) for r in rows))
        self.stats.loss_tokens = int((self.targets != IGNORE_INDEX).sum())

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        return {"inputs": torch.from_numpy(self.inputs[indices]), "targets": torch.from_numpy(self.targets[indices])}


def build_examples(tok, dialogs: Sequence[dict]) -> list[tuple[list[int], list[bool]]]:
    """Encode every dialog record; a bad one raises naming its index (or id) and the problem."""
    out = []
    for i, record in enumerate(dialogs):
        messages = record.get("messages") if isinstance(record, dict) else None
        try:
            out.append(encode_example(tok, messages if messages is not None else record))
        except ChatFormatError as e:
            name = record.get("id", f"#{i}") if isinstance(record, dict) else f"#{i}"
            raise ChatFormatError(f"dialog {name}: {e}") from None
    return out


# --------------------------------------------------------------------------- the loop


def finetune(
    base: str | os.PathLike | Transformer,
    dialogs: Sequence[dict],
    out_dir: str | os.PathLike,
    *,
    train: TrainConfig | None = None,
    tokenizer=None,
    seq_len: int = 256,
    batch_size: int = 16,
    epochs: float = 2.0,
    pack: bool = True,
    overlong: str = "truncate",
    progress: bool = True,
    eval_dialogs: Sequence[dict] = (),
) -> Path:
    """Fine-tune `base` on `dialogs` in the run folder `out_dir` and return it.

    `load_model(out_dir)` loads the result (the tokenizer travels in every checkpoint).
    Running it again on a finished folder returns at once; on an interrupted one it resumes
    exactly. `train.max_steps` is set from `epochs` (SPEC §6: 2) unless `epochs` is 0.
    """
    from ..checkpoint import load_state_dict, resolve_tokenizer_path
    from ..tokenizer import Tokenizer

    out_dir = Path(out_dir)
    train_cfg = train or demo_train()
    tokenizer_path = None
    if isinstance(base, Transformer):
        init_args, init_state = base.args, {k: v.detach().cpu() for k, v in base.state_dict().items()}
        if tokenizer is None:
            raise ValueError("finetune(model, ...) needs tokenizer= (a Tokenizer or its path)")
        base_name = "<model>"
    else:
        base_name = str(base)
        init_args, init_state = load_state_dict(base)
        tokenizer_path = resolve_tokenizer_path(_checkpoint_dir(Path(base)))
    if tokenizer is not None and not hasattr(tokenizer, "encode"):
        tokenizer_path, tokenizer = Path(tokenizer), None
    if tokenizer is None:
        if tokenizer_path is None:
            raise FileNotFoundError(f"no tokenizer.model in {base}; pass tokenizer= (the model's SentencePiece file)")
        tokenizer = Tokenizer(tokenizer_path)
    tokenizer_path = Path(tokenizer_path or tokenizer.model_path)
    if tokenizer.vocab_size != init_args.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but {base_name} has a vocabulary of "
                         f"{init_args.vocab_size}; use the tokenizer the model was trained with")
    if seq_len > init_args.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's context of {init_args.max_seq_len}")

    started = time.perf_counter()
    data = PackedExamples(build_examples(tokenizer, dialogs), seq_len, pack=pack, overlong=overlong,
                          pad_id=max(tokenizer.pad_id, 0))
    stats = data.stats
    if len(data) < batch_size:
        batch_size = max(1, len(data))
    if len(data) == 0:
        raise ValueError(f"none of the {stats.dialogs} dialogs has an answer token to train on")
    if epochs:
        steps = max(1, round(epochs * len(data) / (batch_size * train_cfg.grad_accum)))
        train_cfg = dataclasses.replace(train_cfg, max_steps=steps)
    run_cfg = RunConfig(dir=str(out_dir), progress=progress)
    config = {"base": base_name, "tokenizer": str(tokenizer_path), "seq_len": seq_len, "batch_size": batch_size,
              "epochs": epochs, "pack": pack, "overlong": overlong, "train": dataclasses.asdict(train_cfg)}
    run = Run.start(run_cfg, STAGE, config, parent=base_name, seeds={"train": train_cfg.seed})
    note = (f"{stats.dialogs} dialogs -> {stats.sequences} sequences of {seq_len} ({stats.loss_tokens:,} answer "
            f"tokens of {stats.tokens:,}); truncated {stats.truncated}, dropped {stats.dropped}")
    if progress:
        print(f"sft: {note}", file=sys.stderr)
    run.update(data=dataclasses.asdict(stats), model={**init_args.to_dict(), "parameters": init_args.num_params()})

    eval_fn = None
    if eval_dialogs:
        val = PackedExamples(build_examples(tokenizer, eval_dialogs), seq_len, pack=pack, overlong=overlong)
        val_batches = [val.batch(range(i, min(i + batch_size, len(val)))) for i in range(0, len(val), batch_size)]

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            return evaluate(m, val_batches, causal_lm_loss)

    with torch.device("meta"):
        model = Transformer(init_args)
    batches = PackedBatches(data, batch_size, seed=train_cfg.seed)
    result: TrainResult = train_loop(model, batches, causal_lm_loss, train_cfg, run, eval_fn=eval_fn, init_state=init_state,
                                checkpoint_files={"tokenizer.model": tokenizer_path})
    run.update(final={**result.eval_metrics, "step": result.state.step, "loss": result.metrics.get("loss")},
               seconds=time.perf_counter() - started)
    return out_dir


def _checkpoint_dir(path: Path) -> Path:
    from ..checkpoint import detect_format, latest_checkpoint

    return latest_checkpoint(path) if detect_format(path) == "run" else path


# --------------------------------------------------------------------------- the demo's stage


def eval_records(world, n_helpful: int) -> list[dict]:
    """Held-out prompts for a chat model: `n_helpful` helpful, half as many adversarial and borderline."""
    return (world.prompt_records("helpful", "eval")[:n_helpful] + world.prompt_records("adversarial", "eval")[: n_helpful // 2]
            + world.prompt_records("borderline", "eval")[: n_helpful // 2])


def demo_dialogs(world, *, safety_share: float = 1.0, compliant: int = 0) -> list[dict]:
    """The world's SFT dialogs, by default unchanged. `safety_share` keeps that share of its safety
    demonstrations (SPEC §10); `compliant` adds that many train-split adversarial prompts answered
    with the world's compliant (unsafe) answer, as an annotator told only to be helpful would. The
    demo's SFT model then still violates, so the later safety stages have something to fix: holding
    safety demonstrations back alone does not do it (measured: 0% violations on 120 held-out
    adversarial prompts with all or none of them, greedy or at temperature 0.6; the harmful how-to
    text of the corpus does not surface in the chat replies of a 2.4M-parameter model). With a
    quarter of them and all 360 compliant answers: 18% (SPEC §10's safety tuning then has work)."""
    safety = [d for d in world.sft if d.get("kind") == "safety"]
    kept = set(id(d) for d in safety[: round(safety_share * len(safety))])
    dialogs = [d for d in world.sft if d.get("kind") != "safety" or id(d) in kept]
    prompts = world.prompt_records("adversarial", "train")[:compliant]
    return dialogs + [{"id": f"{r['id']}/compliant", "kind": "compliant",
                       "messages": [{"role": "user", "content": r["prompt"]},
                                    {"role": "assistant", "content": r["unsafe_answer"]}]} for r in prompts]


def run_demo_sft(base: str | os.PathLike, world, out_dir: str | os.PathLike, *, epochs: float = 2.0,
                 eval_prompts: int = 120, safety_share: float = 1.0, compliant: int = 0,
                 progress: bool = True) -> dict:
    """The demo's SFT stage: fine-tune `base` on the world's dialogs in `out_dir`, then measure the
    effect with the gold judges: the pretrained model prompted with the same chat format against
    the SFT model on held-out prompts (paired bootstrap interval). Returns the stage summary
    (also written to `out_dir/summary.json`); `outputs.model` is the fine-tuned run folder.
    `safety_share` and `compliant` change the mix (`demo_dialogs`); the defaults keep the world's."""
    from ..checkpoint import load_model
    from ..eval.chat import chat_eval, paired_difference
    from ..report import write_summary
    from ..tokenizer import Tokenizer

    started = time.perf_counter()
    out_dir = Path(out_dir)
    # 2 epochs (SPEC §6). Measured on the demo preset: 1 epoch leaves gold helpfulness at 0.16 with
    # 63% false refusals (0.24 and 48% at twice the LR); 2 epochs reach 0.33 and 18%.
    finetune(base, demo_dialogs(world, safety_share=safety_share, compliant=compliant), out_dir, epochs=epochs,
             progress=progress)
    tok = Tokenizer(_tokenizer_of(out_dir))
    records = eval_records(world, eval_prompts)
    before = chat_eval(load_model(base), tok, records)
    after = chat_eval(load_model(out_dir), tok, records)
    gain = paired_difference(before, after, "helpfulness")
    b, a = before["metrics"], after["metrics"]
    manifest_data = (_read_manifest(out_dir).get("data") or {})
    effect = (f"gold helpfulness {b['helpfulness']:.3f} (pretrained, chat format) -> {a['helpfulness']:.3f} (SFT), "
              f"{gain['diff']:+.3f} [95% CI {gain['lo']:+.3f}, {gain['hi']:+.3f}]; replies ending with EOS "
              f"{b['parsed']:.0%} -> {a['parsed']:.0%}; violation {b.get('violation', 0):.1%} -> "
              f"{a.get('violation', 0):.1%}, false refusal {b.get('false_refusal', 0):.1%} -> {a.get('false_refusal', 0):.1%}")
    names = ("helpfulness", "parsed", "violation", "false_refusal")
    summary = {
        "stage": STAGE, "effect": effect, "seconds": time.perf_counter() - started,
        "metrics": {**{f"pretrained/{k}": b[k] for k in names if k in b}, **{f"sft/{k}": a[k] for k in names if k in a},
                    "helpfulness_gain": gain["diff"], "helpfulness_gain_lo": gain["lo"], "helpfulness_gain_hi": gain["hi"],
                    "dialogs": manifest_data.get("dialogs", 0), "truncated": manifest_data.get("truncated", 0),
                    "dropped": manifest_data.get("dropped", 0)},
        "tables": [{"title": f"SFT on held-out prompts (gold judges, n = {len(records)})",
                    "columns": ["model", "helpfulness [95% CI]", "ends with EOS", "violation", "false refusal"],
                    "rows": [[name, f"{r['metrics']['helpfulness']:.3f} [{r['intervals']['helpfulness'][0]:.3f}, "
                                    f"{r['intervals']['helpfulness'][1]:.3f}]", round(r["metrics"]["parsed"], 3),
                              round(r["metrics"].get("violation", 0), 3), round(r["metrics"].get("false_refusal", 0), 3)]
                             for name, r in (("pretrained (chat format)", before), ("SFT", after))]}],
        "samples": [{"prompt": rec["prompt"], "reply": item["response"]}
                    for rec, item in list(zip(records, after["per_item"]))[:5]],
        "outputs": {"model": str(out_dir), "sft": str(out_dir)},
    }
    write_summary(out_dir, summary)
    return summary


def _tokenizer_of(run_dir: Path) -> Path:
    from ..checkpoint import resolve_tokenizer_path

    found = resolve_tokenizer_path(_checkpoint_dir(run_dir))
    if found is None:
        raise FileNotFoundError(f"no tokenizer.model in {run_dir}")
    return found


def _read_manifest(run_dir: Path) -> dict:
    from ..report import read_json

    return read_json(run_dir / "manifest.json") or {}


# --------------------------------------------------------------------------- the command


def load_dialogs(cfg: SFTData) -> list[dict]:
    """The user's messages JSONL (errors name file:line), or the built-in world's SFT dialogs."""
    if cfg.dialogs:
        from ..world import read_sft

        return read_sft(cfg.dialogs)
    from ..world import World

    return list(World.generate(seed=cfg.world_seed, size=cfg.world_size).sft)


def main(argv: list[str] | None = None) -> int:
    """`llamaforge sft base=CHECKPOINT [data.dialogs=FILE.jsonl] [key=value ...]`."""
    cfg = parse_cli(SFTConfig, argv, prog="llamaforge sft", description=__doc__.split("\n\n")[0])
    if not cfg.base:
        print("llamaforge sft: error: base= is required: the checkpoint to fine-tune "
              "(e.g. base=runs/demo/01-pretrain)", file=sys.stderr)
        return 2
    from ..world import DataFileError

    try:
        dialogs = load_dialogs(cfg.data)
        out = cfg.run.dir or str(_stage_folder(cfg.run))
        finetune(cfg.base, dialogs, out, train=cfg.train, tokenizer=cfg.tokenizer or None, seq_len=cfg.data.seq_len,
                 batch_size=cfg.data.batch_size, epochs=cfg.data.epochs, pack=cfg.data.pack,
                 overlong=cfg.data.overlong, progress=cfg.run.progress)
    except (FileNotFoundError, ValueError, DataFileError) as e:  # ChatFormatError is a ValueError
        print(f"llamaforge sft: error: {e}", file=sys.stderr)
        return 1
    print(f"sft: fine-tuned model in {out}")
    return 0


def _stage_folder(run_cfg: RunConfig) -> Path:
    from ..trainer import stage_dir

    return stage_dir(run_cfg, STAGE)
