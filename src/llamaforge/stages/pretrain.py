"""Pretraining (SPEC §5): next-token prediction on packed documents, or continued pretraining
from any checkpoint `load_model` reads.

    llamaforge pretrain                                    # the CPU demo on the built-in world
    llamaforge pretrain --config configs/pretrain/7B.yaml data.inputs=/data/corpus data.tokenizer=tokenizer.model
    torchrun --nproc_per_node 8 -m llamaforge pretrain --config configs/pretrain/7B.yaml ...
    llamaforge pretrain model.init_from=llama-2-7b-hf data.inputs=my_corpus/    # continued pretraining

Reads top to bottom: data (the built-in world unless `data.inputs` is given; a tokenizer
trained on it unless one is given; token shards), model, batches, then the shared
training core. The defaults are the demo that runs on a laptop CPU in minutes; the paper's
7B/13B/34B/70B recipes are `configs/pretrain/*.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import distributed
from ..checkpoint import latest_checkpoint, load_state_dict, resolve_tokenizer_path
from ..config import config_to_dict, parse_cli
from ..data import PackedBatches, PackedSequences, TokenShards, eval_batches, tokenize_corpus, unigram_perplexity
from ..data.sources import fingerprint, input_files, iter_documents
from ..model import ModelArgs, Transformer
from ..trainer import (
    RunConfig, TrainConfig, TrainResult, Run, causal_lm_loss, evaluate, train, transformer_flops_per_token,
)

STAGE = "pretrain"


@dataclass
class ModelConfig:
    """The architecture: a preset of model.py, optionally reshaped, or an existing checkpoint."""

    preset: str = "demo"  # ModelArgs preset: 7B, 13B, 34B, 70B, tiny, demo, stories15M, ...
    init_from: str = ""  # continue pretraining this checkpoint (Meta, HF or llamaforge dir); its shape wins
    dim: int | None = None  # the preset's value when unset
    n_layers: int | None = None  # the preset's value when unset
    n_heads: int | None = None  # the preset's value when unset
    n_kv_heads: int | None = None  # the preset's value when unset
    multiple_of: int | None = None  # the preset's value when unset
    ffn_dim_multiplier: float | None = None  # the preset's value when unset

    def args(self, vocab_size: int, seq_len: int) -> ModelArgs:
        """The preset's ModelArgs with these overrides, the tokenizer's vocabulary and room for seq_len."""
        shape = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "ffn_dim_multiplier")
        overrides = {k: getattr(self, k) for k in shape if getattr(self, k) is not None}
        base = ModelArgs.from_preset(self.preset, **overrides)
        return dataclasses.replace(base, vocab_size=vocab_size, max_seq_len=max(base.max_seq_len, seq_len))


@dataclass
class DataConfig:
    """Pretraining text, its tokenizer and how it is cut into batches."""

    inputs: list[str] = field(default_factory=list)  # text/JSONL/Parquet files or folders; empty = the built-in world
    world_seed: int = 0  # seed of the built-in world
    world_size: Literal["tiny", "demo", "large"] = "demo"  # size of the built-in world
    text_key: str = "text"  # field (JSONL) or column (Parquet) holding the document text
    tokenizer: str = ""  # SentencePiece model; empty = init_from's, else one trained on the corpus
    vocab_size: int = 2048  # vocabulary of a tokenizer trained here (Llama 2's has 32000, SPEC §3)
    shards: str = ""  # token-shard folder, reused when it matches; empty = <run>/data
    val_fraction: float = 0.01  # share of documents held out for validation
    seq_len: int = 256  # tokens per training sequence (SPEC §5: 4096)
    batch_size: int = 16  # sequences per micro-batch on each rank
    tokens_per_step: int = 0  # global batch in tokens (SPEC §5: 4M); sets train.grad_accum; 0 = use train.grad_accum
    eval_batches: int = 8  # validation micro-batches per evaluation; 0 = the whole split
    num_threads: int = 0  # tokenizer threads; 0 = all cores


def _demo_train() -> TrainConfig:
    # 360 steps of 16 x 256 tokens: 1.5M tokens, 0.9 passes over the demo world's corpus;
    # about 4.5 minutes of training on 2 idle cores.
    return TrainConfig(lr=3e-3, warmup_steps=30, max_steps=360, checkpoint_every=120, log_every=10, eval_every=120)


@dataclass
class PretrainConfig:
    """Defaults are the CPU demo; configs/pretrain/{7B,13B,34B,70B}.yaml hold the paper's recipes (SPEC §5)."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_demo_train)
    samples: int = 4  # text samples written to samples.jsonl at each evaluation
    sample_tokens: int = 48  # new tokens per sample


def main(argv: list[str] | None = None) -> int:
    """`llamaforge pretrain [--config FILE.yaml] [key=value ...]`; exit status 0 when finished,
    128 + signal number when stopped (and checkpointed) by SIGINT/SIGTERM."""
    cfg = parse_cli(PretrainConfig, argv, prog="llamaforge pretrain", description=__doc__.split("\n\n")[0])
    started_group = not distributed.info().is_distributed
    distributed.init_distributed("cuda" if cfg.train.device.startswith("cuda") else None)
    finished, stopped_by = False, None
    try:
        stopped_by = pretrain(cfg).stopped_by  # the sharded model goes before the group (`distributed.destroy`)
        finished = True
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # Problems with the inputs (paths, shapes, vocabularies): the message says what to do.
        print(f"llamaforge pretrain: error: {e}", file=sys.stderr)
        return 1
    finally:
        if started_group:
            distributed.destroy(wait=finished)
    return {"SIGINT": 130, "SIGTERM": 143}.get(stopped_by or "", 0)


def pretrain(cfg: PretrainConfig) -> TrainResult:
    """Run (or resume) the pretraining stage described by `cfg`; every rank calls this."""
    dist = distributed.info()
    if cfg.data.inputs:
        input_files(cfg.data.inputs)  # missing inputs fail here, before a run folder exists
    if cfg.data.tokenizer and not Path(cfg.data.tokenizer).is_file():
        raise FileNotFoundError(f"data.tokenizer {cfg.data.tokenizer} does not exist; leave it empty to train one")
    run = Run.start(cfg.run, STAGE, config_to_dict(cfg), seeds={"train": cfg.train.seed, "world": cfg.data.world_seed},
                    parent=cfg.model.init_from or None)

    # Data: text -> tokenizer -> token shards (rank 0 prepares, the others wait).
    init = load_state_dict(cfg.model.init_from) if cfg.model.init_from else None
    corpus = [Path(p) for p in cfg.data.inputs] or [run.path / "world" / "corpus"]
    tokenizer_path = _tokenizer_path(cfg, run.path)
    shard_dir = Path(cfg.data.shards or run.path / "data")
    if dist.is_main:
        if not cfg.data.inputs:
            _write_world(run.path / "world", cfg.data.world_seed, cfg.data.world_size)
        if not tokenizer_path.exists():
            _train_tokenizer(corpus, tokenizer_path, cfg.data)
        tokenize_corpus(corpus, _tokenizer(tokenizer_path), shard_dir, val_fraction=cfg.data.val_fraction,
                        text_key=cfg.data.text_key, num_threads=cfg.data.num_threads, progress=cfg.run.progress)
        run.update(inputs={"corpus": fingerprint(input_files(corpus)), "tokenizer": str(tokenizer_path),
                           "shards": str(shard_dir)})
    distributed.barrier()
    tokenizer = _tokenizer(tokenizer_path)

    # Model: built on the meta device, materialised (or sharded first) by the core.
    seq_len = cfg.data.seq_len
    if init is not None:
        args, init_state = init
        _check_init(args, tokenizer.vocab_size, seq_len, cfg.model.init_from)
    else:
        args, init_state = cfg.model.args(tokenizer.vocab_size, seq_len), None
    with torch.device("meta"):
        model = Transformer(args)

    # Batches: every rank reads its own slice of each global batch.
    train_sequences = PackedSequences(TokenShards(shard_dir, "train"), seq_len)
    batches = PackedBatches(train_sequences, cfg.data.batch_size, seed=cfg.train.seed, rank=dist.rank,
                            world_size=dist.world_size)
    val_sequences = PackedSequences(TokenShards(shard_dir, "val"), seq_len)
    val = eval_batches(val_sequences, cfg.data.batch_size, rank=dist.rank, world_size=dist.world_size,
                       max_batches=cfg.data.eval_batches)
    train_cfg = dataclasses.replace(cfg.train, grad_accum=_grad_accum(cfg, dist.world_size))

    baseline = _unigram_baseline(train_sequences.shards, val_sequences, len(val) * cfg.data.batch_size * dist.world_size)
    run.update(model={**args.to_dict(), "parameters": args.num_params()}, unigram_val_ppl=baseline,
               data={"train_tokens": train_sequences.shards.num_tokens, "train_sequences": len(train_sequences),
                     "val_sequences_evaluated": len(val) * cfg.data.batch_size * dist.world_size,
                     "tokens_per_step": cfg.data.batch_size * seq_len * dist.world_size * train_cfg.grad_accum})
    distributed.print0(
        f"pretraining {args.num_params():,} parameters on {train_sequences.shards.num_tokens:,} tokens "
        f"({len(train_sequences):,} sequences of {seq_len}); unigram val perplexity {baseline:.1f}; run {run.path}"
    )

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        result = evaluate(m, val, causal_lm_loss)
        return {"loss": result["loss"], "ppl": math.exp(min(result["loss"], 50.0))}

    prompts = _sample_prompts(val_sequences, tokenizer.bos_id, cfg.samples)

    def sample_fn(m: torch.nn.Module) -> list[dict]:
        from ..generate import SamplingParams, generate

        if not prompts:
            return []
        # A fixed seed: the same text on every rank (FSDP needs equal forward counts), comparable across steps.
        params = SamplingParams(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_p=0.95, seed=cfg.train.seed)
        completions = generate(m, prompts, params, tokenizer=tokenizer)
        return [{"prompt": tokenizer.decode(p), "completion": c.text} for p, c in zip(prompts, completions)]

    result = train(model, batches, causal_lm_loss, train_cfg, run, eval_fn=eval_fn, sample_fn=sample_fn,
                   flops_per_token=transformer_flops_per_token(args, seq_len), init_state=init_state,
                   checkpoint_files={"tokenizer.model": tokenizer_path})
    run.update(final={**result.eval_metrics, "unigram_val_ppl": baseline, "step": result.state.step,
                      "tokens_seen": result.state.tokens_seen})
    if result.eval_metrics:
        distributed.print0(
            f"step {result.state.step}: val perplexity {result.eval_metrics['val_ppl']:.2f} "
            f"(unigram {baseline:.1f}); checkpoints in {run.path / 'checkpoints'}"
        )
    return result


# --------------------------------------------------------------------------- helpers


def _tokenizer(path: Path):
    from ..tokenizer import Tokenizer

    return Tokenizer(path)


def _tokenizer_path(cfg: PretrainConfig, run_dir: Path) -> Path:
    if cfg.data.tokenizer:
        return Path(cfg.data.tokenizer)
    if cfg.model.init_from:
        source = Path(cfg.model.init_from)
        found = resolve_tokenizer_path(source)
        if found is None and latest_checkpoint(source) is not None:  # a run folder: the checkpoint carries it
            found = resolve_tokenizer_path(latest_checkpoint(source))
        if found is None:
            raise FileNotFoundError(
                f"no tokenizer.model in {cfg.model.init_from} or its parent; continued pretraining needs the "
                "checkpoint's own tokenizer: pass data.tokenizer=PATH"
            )
        return found
    return run_dir / "tokenizer.model"


def _write_world(directory: Path, seed: int, size: str) -> None:
    """The built-in world's files (its corpus is the default pretraining data); kept when present."""
    import json

    from ..world import World, write_world

    manifest = directory / "world.json"
    if manifest.exists():
        existing = json.loads(manifest.read_text())
        if existing.get("seed") == seed and existing.get("size") == size:
            return
    distributed.print0(f"generating the built-in world (seed {seed}, size {size}) in {directory}")
    write_world(World.generate(seed=seed, size=size), directory)


def _train_tokenizer(corpus: list[Path], path: Path, data: DataConfig) -> None:
    from ..tokenizer import train_tokenizer

    distributed.print0(f"training a {data.vocab_size}-piece tokenizer on {', '.join(map(str, corpus))}")
    train_tokenizer(iter_documents(input_files(corpus), data.text_key), path, data.vocab_size)


def _check_init(args: ModelArgs, vocab_size: int, seq_len: int, source: str) -> None:
    if args.vocab_size != vocab_size:
        raise ValueError(
            f"{source} has a vocabulary of {args.vocab_size} but the tokenizer has {vocab_size}; continued "
            "pretraining needs the checkpoint's own tokenizer (data.tokenizer=...)"
        )
    if seq_len > args.max_seq_len:
        raise ValueError(f"data.seq_len {seq_len} exceeds the context of {source} ({args.max_seq_len})")


def _grad_accum(cfg: PretrainConfig, world_size: int) -> int:
    """train.grad_accum, or the number of micro-batches that makes data.tokens_per_step."""
    if not cfg.data.tokens_per_step:
        return cfg.train.grad_accum
    per_micro_step = cfg.data.batch_size * cfg.data.seq_len * world_size
    if cfg.data.tokens_per_step % per_micro_step:
        raise ValueError(
            f"data.tokens_per_step={cfg.data.tokens_per_step} is not a multiple of data.batch_size x data.seq_len x "
            f"ranks = {cfg.data.batch_size} x {cfg.data.seq_len} x {world_size} = {per_micro_step}; adjust one of them"
        )
    return cfg.data.tokens_per_step // per_micro_step


def _unigram_baseline(train_shards: TokenShards, val: PackedSequences, n_sequences: int) -> float:
    """The unigram model's perplexity on exactly the validation targets the model is scored on."""
    targets = np.concatenate([val.window(i)[1:] for i in range(n_sequences)])
    return unigram_perplexity(train_shards, targets)


def _sample_prompts(val: PackedSequences, bos_id: int, n: int, length: int = 6) -> list[list[int]]:
    """The first `length` tokens of the first `n` validation documents (each from its BOS)."""
    prompts = []
    for array in val.shards.arrays:
        for start in np.flatnonzero(np.asarray(array[: 1 << 20]) == bos_id):
            if len(prompts) == n:
                return prompts
            if start + length <= len(array):
                prompts.append([int(t) for t in array[start : start + length]])
    return prompts


if __name__ == "__main__":
    raise SystemExit(main())
