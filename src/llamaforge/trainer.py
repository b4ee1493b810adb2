"""The training core every stage shares (pretraining, SFT, reward models, rejection sampling, PPO).

A stage brings three things: a model, an iterator of batches that can save and restore its
position (`state_dict()` / `load_state_dict()`), and a loss function
`loss_fn(model, batch) -> LossOutput`. `train()` does the rest, reading top to bottom:
device and precision, FSDP2 sharding under torchrun, AdamW with the paper's settings, the
warmup + cosine schedule, gradient accumulation, clipping, skipping non-finite steps,
atomic checkpoints (every N steps and on SIGINT/SIGTERM) that resume bit-exactly, metrics,
evaluation, samples and the run's energy. Stages that need their own loop (PPO) use the
same pieces: `prepare_model`, `build_optimizer`, `lr_at`, `backward_and_step`,
`save_checkpoint`, `load_checkpoint`, `Run`.

Which tensors decay (AdamW's decoupled weight decay 0.1, SPEC §5): every weight matrix of
a linear map (attention wq/wk/wv/wo, feed-forward w1/w2/w3, the output projection, a reward
head). Not decayed: RMSNorm gains (1-D), whose neutral value is 1, not 0, so decay would
fight the normalisation; and the token embedding, because decoupled decay shrinks every
row at every step while a row only gets gradient when its token occurs, so rare tokens'
embeddings would be pulled to zero between occurrences. (The output projection gets
gradient on every row at every step through the softmax, so it decays.)
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import yaml
from torch import nn

from . import distributed
from .checkpoint import NATIVE_WEIGHTS, atomic_dir
from .cpu_kernels import cpu_has_bf16_matmul, keep_freed_memory

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


# --------------------------------------------------------------------------- configs


@dataclass
class TrainConfig:
    """Optimizer and loop settings. Defaults are the paper's pretraining recipe (SPEC §5)."""

    lr: float = 3e-4  # peak learning rate (SPEC §5: 3e-4 for 7B/13B, 1.5e-4 for 34B/70B)
    schedule: Literal["cosine", "constant"] = "cosine"  # after warmup: cosine decay (SPEC §5) or constant (PPO, SPEC §8)
    warmup_steps: int = 2000  # linear warmup from 0 (SPEC §5)
    min_lr_ratio: float = 0.1  # the cosine ends at this fraction of the peak (SPEC §5)
    max_steps: int = 1000  # optimizer steps in the whole run
    weight_decay: float = 0.1  # AdamW decoupled decay of weight matrices, not norms or embeddings (SPEC §5)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW beta1, beta2 (SPEC §5)
    eps: float = 1e-5  # AdamW epsilon (SPEC §5)
    grad_clip: float = 1.0  # maximum global gradient norm; 0 = no clipping (SPEC §5)
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast where matmuls have bf16 units
    compile: bool = False  # torch.compile the model
    fused_adamw: bool = False  # torch's fused AdamW kernel on the CPU too (always on CUDA): ~10x faster optimizer steps, same update up to rounding; off by default so far (benchmarks/RESULTS.md)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~30% more compute
    checkpoint_every: int = 1000  # steps between checkpoints; 0 = only at the end and on SIGINT/SIGTERM
    keep_last: int = 3  # newest checkpoints kept; 0 = keep all
    max_nonfinite_in_a_row: int = 10  # steps skipped in a row (non-finite loss or gradient) before the run stops
    log_every: int = 10  # steps between lines of metrics.jsonl
    eval_every: int = 0  # steps between evaluations; 0 = only at the end
    seed: int = 0  # seeds model init, data order and every RNG
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    peak_tflops: float = 0.0  # per device, for MFU; 0 = known GPU table or a measured matmul
    power_watts: float = 0.0  # per device, for energy; 0 = nvidia-smi when available, else carbon.DEFAULT_WATTS
    pue: float = 1.1  # data-centre power usage effectiveness (SPEC §12)
    carbon_intensity: float = 0.385  # kg CO2eq per kWh of the grid (SPEC §12)

    def __post_init__(self) -> None:
        positive = ("max_steps", "grad_accum", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "keep_last", "max_nonfinite_in_a_row", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be in [0, 1), got {self.betas}")


@dataclass
class RunConfig:
    """Where a run lives: runs/<name>/<NN>-<stage>/ (ARCHITECTURE.md, Runs)."""

    name: str = "demo"  # the run's folder under root
    root: str = "runs"  # folder holding all runs
    dir: str = ""  # explicit stage folder, instead of root/name/NN-stage
    resume: bool = True  # continue the latest folder of this stage from its newest checkpoint
    progress: bool = True  # progress bar with ETA on stderr
    tensorboard: bool = False  # also log to TensorBoard (needs the tensorboard package)
    wandb_project: str = ""  # also log to this Weights & Biases project (needs wandb)


# --------------------------------------------------------------------------- the stage's side


@dataclass
class LossOutput:
    """What a stage's loss function returns for one micro-batch.

    `total` is the loss summed over the `count` units it covers (tokens, pairs, ...); the
    core divides by the global count over all micro-batches and ranks, so each unit weighs
    the same however the batch is split. `tokens` (default: count) feeds throughput; every
    entry of `metrics` is a sum too and is logged divided by the global count.
    """

    total: torch.Tensor
    count: torch.Tensor | int | float
    tokens: int = 0
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Batches(Protocol):
    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


LossFn = Callable[[nn.Module, Any], LossOutput]


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
    """Next-token loss on {"inputs", "targets"} (targets -100 where no loss): pretraining, SFT.

    Through the model's fused cross-entropy: the logits are never held at once, and rows
    without a target (SFT's prompt tokens, SPEC §6) skip the vocabulary projection."""
    targets = batch["targets"]
    total = model(batch["inputs"], targets=targets)
    return LossOutput(total, (targets != -100).sum(), tokens=targets.numel())


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done (skipped non-finite steps count: their data is consumed)
    tokens_seen: int = 0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0


@dataclass
class TrainResult:
    model: nn.Module
    state: TrainState
    metrics: dict[str, float]  # the last logged training metrics
    eval_metrics: dict[str, float]  # the last evaluation
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" when a signal ended the run early


# --------------------------------------------------------------------------- device and precision


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.info().local_rank)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", distributed.info().local_rank)
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16". auto picks bf16 autocast on CUDA GPUs with bf16 and on CPUs with bf16
    matrix units; on other CPUs bf16 is emulated (measured 16x slower than fp32 on an AVX2
    EPYC), so fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matmul() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for matmuls (weights and optimizer stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------- model


# Above this size a model is initialised after sharding, each rank filling only its shards;
# below it every rank builds the whole model first, so any number of ranks starts from the
# very weights a single process would (that is what makes 1 vs N ranks comparable).
SHARD_BEFORE_INIT_PARAMS = 1_000_000_000


def prepare_model(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    *,
    init_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Place the model on `device`, shard it under torchrun, and turn on checkpointing/compile.

    A model built on the `meta` device (the way to build a large one) is materialised here:
    filled from `init_state` (continued pretraining) or initialised with `init_weights()`
    under `cfg.seed`.
    """
    dist = distributed.info()
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = cfg.activation_checkpointing
    on_meta = any(p.is_meta for p in model.parameters())
    whole_first = not dist.is_distributed or sum(p.numel() for p in model.parameters()) <= SHARD_BEFORE_INIT_PARAMS
    if not on_meta:
        model.to(device)
    elif whole_first:
        _materialize(model, device, cfg.seed, initialise=init_state is None)
    if dist.is_distributed:
        distributed.shard_model(model, param_dtype=torch.bfloat16 if precision == "bf16" else None)
        if on_meta and not whole_first:
            _materialize(model, device, cfg.seed, initialise=init_state is None)
    if init_state is not None:
        _fill(model, init_state)
    if cfg.compile:
        model.compile()
    return model.train()


def _materialize(model: nn.Module, device: torch.device, seed: int, *, initialise: bool) -> None:
    """Allocate a meta-device model's tensors on `device` and, unless weights will be copied in,
    initialise them under `seed`."""
    model.to_empty(device=device)
    if not initialise:
        return
    torch.manual_seed(seed)
    if hasattr(model, "init_weights"):
        model.init_weights()
    else:
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


def _fill(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"initial weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, target in own.items():
        distributed.copy_full_into(target, state[name])


def transformer_flops_per_token(args: Any, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a Llama: 6 per weight of every matmul
    (the embedding lookup is no matmul) plus attention's 12 * layers * dim * seq_len, the
    PaLM paper's MFU convention (its Appendix B)."""
    matmul_params = args.num_params() - args.vocab_size * args.dim
    return 6.0 * matmul_params + 12.0 * args.n_layers * args.dim * seq_len


# --------------------------------------------------------------------------- optimizer and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight matrices decay; norms, biases and embeddings do not (module docstring)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = isinstance(module, nn.Embedding) or param.ndim < 2
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (SPEC §5: betas 0.9/0.95, eps 1e-5, weight decay 0.1); torch's fused kernel on CUDA,
    and on the CPU with `fused_adamw` (stories15M's 24M parameters on 2 cores: 6.8 ms a step
    against 68 ms for the multi-tensor default, whose 68 ms are a tenth of a training step)."""
    fused = device.type == "cuda" or (device.type == "cpu" and cfg.fused_adamw)
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to the peak over
    `warmup_steps`, then cosine down to `min_lr_ratio` x peak at the last step (SPEC §5),
    or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = cfg.max_steps - 1 - cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- one step


@dataclass
class StepOutcome:
    loss: float
    grad_norm: float
    tokens: int
    applied: bool  # False when the step was skipped for a non-finite loss or gradient
    metrics: dict[str, float]


def backward_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterator[Any],
    loss_fn: LossFn,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    precision: str,
) -> StepOutcome:
    """One optimizer step over `cfg.grad_accum` micro-batches of this rank.

    Losses are summed and the gradient divided by the global count afterwards, so N ranks x
    k micro-batches give the gradient of one process on the whole global batch. A
    non-finite loss or gradient norm skips the update (the gradient is dropped).
    """
    sharded = distributed.info().is_distributed
    totals = None
    keys: list[str] = []
    for micro in range(cfg.grad_accum):
        batch = to_device(next(micro_batches), device)
        if sharded:
            # Reduce-scatter gradients only once, after the last micro-batch.
            model.set_requires_gradient_sync(micro == cfg.grad_accum - 1)
        with autocast(device, precision):
            out = loss_fn(model, batch)
        out.total.backward()
        keys = sorted(out.metrics)
        row = _as_row([out.total, out.count, out.tokens or out.count] + [out.metrics[k] for k in keys], device)
        totals = row if totals is None else totals + row
    distributed.all_reduce_sum(totals)
    count = totals[1].item()
    loss = totals[0].item() / count if count > 0 else float("nan")
    params = [p for p in model.parameters() if p.grad is not None]
    if count > 0:
        with torch.no_grad():
            for p in params:
                p.grad.mul_(1.0 / count)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    grad_norm = float(distributed.full_tensor(grad_norm))
    applied = math.isfinite(loss) and math.isfinite(grad_norm)
    if applied:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {k: totals[3 + i].item() / count if count > 0 else float("nan") for i, k in enumerate(keys)}
    return StepOutcome(loss, grad_norm, int(totals[2].item()), applied, metrics)


def _as_row(values: list, device: torch.device) -> torch.Tensor:
    """Scalars (tensors or numbers) as one float64 vector: summed over micro-batches, then ranks."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(()) for v in values])


@torch.no_grad()
def evaluate(model: nn.Module, batches, loss_fn: LossFn) -> dict[str, float]:
    """Mean loss (and metrics) of `loss_fn` over `batches`, summed over all ranks.

    Call it under the autocast of training; `train()` does so for its `eval_fn`."""
    device = next(model.parameters()).device
    totals, keys = None, []
    for batch in batches:
        out = loss_fn(model, to_device(batch, device))
        keys = sorted(out.metrics)
        row = _as_row([out.total, out.count] + [out.metrics[k] for k in keys], device)
        totals = row if totals is None else totals + row
    if totals is None:
        raise ValueError("evaluate() got no batches")
    distributed.all_reduce_sum(totals)
    count = totals[1].item()
    return {"loss": totals[0].item() / count, **{k: totals[2 + i].item() / count for i, k in enumerate(keys)}}


# --------------------------------------------------------------------------- checkpoints

_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class TensorFileWriter:
    """Writes a safetensors file one tensor at a time, so a sharded model is saved by
    gathering a single full tensor at a time onto rank 0, never the whole model.

    The header (names, dtypes, shapes, offsets) is known up front from the global shapes;
    other ranks create the writer with path None and only take part in the gathers.
    """

    def __init__(self, path: Path | None, specs: list[tuple[str, torch.Size, torch.dtype]]):
        self.specs, self.next, self.file = specs, 0, None
        if path is None:
            return
        header, offset = {}, 0
        for name, shape, dtype in specs:
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(blob)) + blob)

    def write(self, tensor: torch.Tensor) -> None:
        name, shape, dtype = self.specs[self.next]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise ValueError(f"{name}: expected {dtype} {list(shape)}, got {tensor.dtype} {list(tensor.shape)}")
        self.next += 1
        if self.file is not None:
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self.file.write(data.numpy().tobytes())

    def close(self) -> None:
        if self.next != len(self.specs):
            raise RuntimeError(f"wrote {self.next} of {len(self.specs)} tensors")
        if self.file is not None:
            self.file.close()


def _write_tensors(path: Path | None, named: list[tuple[str, torch.Tensor]]) -> None:
    writer = TensorFileWriter(path, [(n, t.shape, t.dtype) for n, t in named])
    for _, tensor in named:
        writer.write(distributed.full_tensor(tensor))
    writer.close()


def _optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """Optimizer state keyed by parameter name: "<param>/exp_avg", "<param>/exp_avg_sq", "<param>/step"."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in sorted(optimizer.state.get(p, {}).items()):
                if isinstance(value, torch.Tensor):
                    out.append((f"{names[id(p)]}/{key}", value))
    return out


def rng_state() -> dict[str, Any]:
    """Every RNG a stage may draw from, as JSON."""
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": json.loads(json.dumps(random.getstate())),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    batches: Batches,
    keep_last: int = 0,
    files: dict[str, Path] | None = None,
) -> Path:
    """Write checkpoints/step-N/ atomically (every rank calls this; rank 0 writes).

    step-N/ holds params.json + model.safetensors (the native layout with Meta names, so
    `load_model` reads it), optimizer.safetensors (AdamW moments by parameter name) and
    trainer_state.json (step, counters, each rank's data position and RNG states).
    Sharded tensors are gathered one at a time. `files` (name -> path, e.g. the tokenizer)
    are copied in. Keeps the newest `keep_last` checkpoints (0 = all).
    """
    dist = distributed.info()
    ranks = distributed.gather_objects({"data": batches.state_dict(), "rng": rng_state()})
    path = run_dir / "checkpoints" / f"step-{state.step}"
    weights = list(model.state_dict().items())
    moments = _optimizer_tensors(model, optimizer)
    with atomic_dir(path) if dist.is_main else contextlib.nullcontext() as tmp:
        _write_tensors(tmp / NATIVE_WEIGHTS if tmp else None, weights)
        _write_tensors(tmp / OPTIMIZER_FILE if tmp else None, moments)
        if tmp is not None:
            if hasattr(model, "args"):
                (tmp / "params.json").write_text(json.dumps(model.args.to_dict(), indent=2) + "\n")
            record = {**state.__dict__, "world_size": dist.world_size, "ranks": ranks,
                      "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            (tmp / STATE_FILE).write_text(json.dumps(record) + "\n")
            for name, source in (files or {}).items():
                shutil.copyfile(source, tmp / name)
    if dist.is_main and keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of one stage folder, oldest first."""
    found = []
    for path in Path(run_dir).glob("checkpoints/step-*"):
        match = re.fullmatch(r"step-(\d+)", path.name)
        if match and (path / STATE_FILE).exists():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, batches: Batches | None) -> TrainState:
    """Restore weights, optimizer moments, data position and RNG from `path` (every rank
    calls this). Works across world sizes: a checkpoint saved by N ranks loads into one
    process and vice versa, each rank reading only the tensors it needs, one at a time."""
    from safetensors import safe_open

    path = Path(path)
    dist = distributed.info()
    with safe_open(str(path / NATIVE_WEIGHTS), framework="pt") as f:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(f.keys())), sorted(set(f.keys()) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                "resume with the model config the run started with"
            )
        for name, target in own.items():
            distributed.copy_full_into(target, f.get_tensor(name))
    if optimizer is not None:
        _load_optimizer(path / OPTIMIZER_FILE, model, optimizer)
    record = json.loads((path / STATE_FILE).read_text())
    ranks = record["ranks"]
    mine = ranks[dist.rank] if dist.rank < len(ranks) else ranks[0]
    if batches is not None:
        batches.load_state_dict(mine["data"])
    if record["world_size"] == dist.world_size:
        set_rng_state(mine["rng"])
    fields = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in record.items() if k in fields})


def _load_optimizer(file: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    from safetensors import safe_open

    names = {id(p): n for n, p in model.named_parameters()}
    with safe_open(str(file), framework="pt") as f:
        by_param: dict[str, list[str]] = defaultdict(list)
        for key in f.keys():
            name, _, slot = key.rpartition("/")
            by_param[name].append(slot)
        state, index = {}, 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                slots = by_param.get(names[id(p)], [])
                if slots:
                    state[index] = {}
                    for slot in slots:
                        full = f.get_tensor(f"{names[id(p)]}/{slot}")
                        state[index][slot] = full if full.ndim == 0 else distributed.shard_like(full, p)
                index += 1
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


# --------------------------------------------------------------------------- runs


def code_version() -> dict[str, Any]:
    from . import __version__

    version: dict[str, Any] = {"llamaforge": __version__, "torch": torch.__version__}
    repo = Path(__file__).resolve().parents[2]
    try:
        # Read-only git queries (GIT_OPTIONAL_LOCKS=0: `status` must not even refresh the index).
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, env=env)
        if rev.returncode == 0:
            version["git"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5, env=env)
            version["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    """runs/<name>/<NN>-<stage>: the latest folder of this stage when resuming, else the next NN."""
    if cfg.dir:
        return Path(cfg.dir)
    parent = Path(cfg.root) / cfg.name
    existing = sorted(p for p in parent.glob(f"[0-9][0-9]-{stage}") if p.is_dir()) if parent.exists() else []
    if existing and cfg.resume:
        return existing[-1]
    numbers = [int(p.name[:2]) for p in parent.glob("[0-9][0-9]-*")] if parent.exists() else []
    return parent / f"{max(numbers, default=0) + 1:02d}-{stage}"


class Run:
    """One stage folder: manifest.json, config.yaml, metrics.jsonl, samples.jsonl, checkpoints/.

    Only rank 0 writes; every method is safe to call on any rank.
    """

    def __init__(self, path: Path, stage: str, cfg: RunConfig):
        self.path, self.stage, self.cfg = Path(path), stage, cfg
        self.is_main = distributed.info().is_main
        self.manifest_path = self.path / "manifest.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples_path = self.path / "samples.jsonl"
        self.manifest: dict[str, Any] = {}
        self._trackers: list[Any] = []
        self._energy_before: dict[str, float] = {}

    @classmethod
    def start(
        cls, cfg: RunConfig, stage: str, config: dict[str, Any], *, inputs: dict[str, Any] | None = None,
        parent: str | None = None, seeds: dict[str, int] | None = None,
    ) -> Run:
        """Create (or reopen, when resuming) the stage folder and write its manifest."""
        path = Path(distributed.broadcast_object(str(stage_dir(cfg, stage)) if distributed.info().is_main else None))
        run = cls(path, stage, cfg)
        if run.is_main:
            path.mkdir(parents=True, exist_ok=True)
            previous = json.loads(run.manifest_path.read_text()) if run.manifest_path.exists() else {}
            run._energy_before = {k: previous.get("energy", {}).get(k, 0.0) for k in ("device_hours", "kwh", "tco2eq")}
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            run.manifest = {
                "stage": stage,
                "name": cfg.name,
                "created": previous.get("created", now),
                "config": config,
                "code_version": code_version(),
                "seeds": seeds or {},
                "inputs": inputs or {},
                "parent": parent,
                "world_size": distributed.info().world_size,
                "status": "running",
                "sessions": previous.get("sessions", []) + [{"started": now}],
            }
            if "energy" in previous:
                run.manifest["energy"] = previous["energy"]
            run.write_manifest()
            # The resolved config as a file `--config` takes, to rerun or resume the stage.
            (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        distributed.barrier()
        return run

    def update(self, **fields: Any) -> None:
        if self.is_main:
            self.manifest.update(fields)
            self.write_manifest()

    def write_manifest(self) -> None:
        tmp = self.manifest_path.with_name(f".manifest.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
        os.replace(tmp, self.manifest_path)

    def record_energy(self, session: dict[str, Any]) -> None:
        """The manifest's energy: this session's meter plus every earlier session of the stage."""
        total = {k: self._energy_before.get(k, 0.0) + session[k] for k in ("device_hours", "kwh", "tco2eq")}
        self.update(energy={**session, **total})

    def open_trackers(self, config: dict[str, Any]) -> None:
        """TensorBoard / W&B when asked for and installed; a warning otherwise, never an error."""
        if not self.is_main:
            return
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._trackers.append(SummaryWriter(str(self.path / "tensorboard")))
            except ImportError:
                distributed.print0("tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only")
        if self.cfg.wandb_project:
            try:
                import wandb

                self._trackers.append(wandb.init(project=self.cfg.wandb_project, name=f"{self.cfg.name}/{self.path.name}",
                                                 config=config, dir=str(self.path)))
            except ImportError:
                distributed.print0("wandb is not installed (pip install wandb); logging to metrics.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for tracker in self._trackers:
            if hasattr(tracker, "add_scalar"):
                for key, value in numbers.items():
                    tracker.add_scalar(key, value, step)
            else:
                tracker.log(numbers, step=step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if self.is_main and samples:
            with open(self.samples_path, "a") as f:
                for sample in samples:
                    f.write(json.dumps({"step": step, **sample}, ensure_ascii=False) + "\n")

    def close(self, status: str) -> None:
        for tracker in self._trackers:
            (tracker.close if hasattr(tracker, "close") else tracker.finish)()
        self._trackers = []
        if self.is_main:
            sessions = self.manifest.get("sessions", [])
            if sessions:
                sessions[-1]["ended"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                sessions[-1]["status"] = status
            self.update(status=status, sessions=sessions)


class StopRequest:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step; a second
    Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: saving a checkpoint after this step (Ctrl-C again to quit now)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- throughput


# Dense bf16 tensor-core peaks per GPU (FLOP/s), for MFU.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "V100": 125e12}


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.5, trials: int = 5,
    *, torch_only: bool = False,
) -> float:
    """Achieved FLOP/s of a square matmul, the best of `trials` timings and of every kernel at
    hand (torch's own, and oneDNN's where llamaforge uses it: `cpu_kernels`): the
    practical peak when no datasheet applies (CPUs). The best, not the mean, so a busy machine
    does not pass for a slow one. torch_only: torch.matmul's rate alone."""
    from .cpu_kernels import matmul, onednn_matmuls

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    fast_cpu = device.type == "cpu" and dtype == torch.float32 and onednn_matmuls() and not torch_only
    kernels = [torch.matmul] + ([matmul] if fast_cpu else [])
    best = 0.0
    for kernel in kernels:
        kernel(a, b)
        for _ in range(trials):
            runs, start = 0, time.perf_counter()
            while True:
                kernel(a, b)
                runs += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / trials / len(kernels):
                    break
            best = max(best, 2 * size**3 * runs / elapsed)
    return best


def peak_flops(cfg: TrainConfig, device: torch.device, precision: str) -> float:
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops if precision == "bf16" else flops / 2
    return measure_matmul_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)


def memory_gb(device: torch.device) -> float:
    """Peak memory: allocated on the GPU, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn,
    cfg: TrainConfig,
    run: Run,
    *,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    sample_fn: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
    flops_per_token: float = 0.0,
    init_state: dict[str, torch.Tensor] | None = None,
    checkpoint_files: dict[str, Path] | None = None,
) -> TrainResult:
    """Train `model` on `batches` with `loss_fn` for `cfg.max_steps` optimizer steps in `run`.

    Resumes from the run's newest checkpoint when there is one (and `run.cfg.resume`);
    otherwise starts from `init_state` (weights for continued training) or from the
    model's own initialisation. `eval_fn(model)` (called on every rank, under no_grad and
    autocast, every `eval_every` steps and at the end) returns metrics logged with a
    "val_" prefix; `sample_fn(model)` returns records appended to samples.jsonl.
    `checkpoint_files` (name -> path, e.g. {"tokenizer.model": ...}) go into every checkpoint.
    """
    from .carbon import EnergyMeter

    dist = distributed.info()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16_matmul():
        distributed.print0("llamaforge: precision=bf16 on a CPU without bf16 matrix units (AVX512-BF16 or AMX): "
                           "its matmuls are emulated, many times slower than fp32; precision=auto picks fp32 here")
    if device.type == "cpu":
        keep_freed_memory()  # a quarter of a CPU step went to page faults on big tensors
    checkpoints = list_checkpoints(run.path) if run.cfg.resume else []
    model = prepare_model(model, cfg, device, precision, init_state=None if checkpoints else init_state)
    optimizer = build_optimizer(model, cfg, device)
    state = TrainState()
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, batches)
        distributed.print0(f"resumed from {checkpoints[-1]} (step {state.step})")
    else:
        torch.manual_seed(cfg.seed + dist.rank)
    run.update(device=str(device), precision=precision, world_size=dist.world_size)
    run.open_trackers(run.manifest.get("config", {}))
    peak = peak_flops(cfg, device, precision) if flops_per_token else 0.0

    meter = EnergyMeter(device.type if device.type in ("cpu", "cuda") else "cpu", n_devices=dist.world_size,
                        watts=cfg.power_watts or None, pue=cfg.pue, intensity=cfg.carbon_intensity)
    bar = None
    if run.cfg.progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=state.step, desc=run.stage, dynamic_ncols=True)
    metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    saved_step = state.step if checkpoints else -1
    status = "failed"
    window_tokens, window_seconds = 0, 0.0  # throughput counts training steps only, not evals or saves

    def evaluate_now() -> None:
        nonlocal eval_metrics
        if eval_fn is None and sample_fn is None:
            return
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            if eval_fn is not None:
                eval_metrics = {f"val_{k}": v for k, v in eval_fn(model).items()}
                run.log({"step": state.step, **eval_metrics})
                if bar is not None:
                    bar.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
            if sample_fn is not None:
                run.log_samples(state.step, sample_fn(model))
        model.train()

    def checkpoint_now() -> None:
        nonlocal saved_step
        save_checkpoint(run.path, model, optimizer, state, batches, cfg.keep_last, checkpoint_files)
        saved_step = state.step
        run.record_energy(meter.as_dict())

    with meter, StopRequest() as stop:
        try:
            while state.step < cfg.max_steps:
                lr = lr_at(state.step, cfg)
                step_start = time.perf_counter()
                outcome = backward_and_step(model, optimizer, batches, loss_fn, cfg, lr, device, precision)
                window_seconds += time.perf_counter() - step_start
                state.step += 1
                state.tokens_seen += outcome.tokens
                window_tokens += outcome.tokens
                if outcome.applied:
                    state.nonfinite_in_a_row = 0
                else:
                    state.nonfinite_in_a_row += 1
                    state.skipped_steps += 1
                    run.log({"step": state.step, "skipped": True, "loss": outcome.loss, "grad_norm": outcome.grad_norm})
                    if state.nonfinite_in_a_row > cfg.max_nonfinite_in_a_row:
                        raise NonFiniteError(
                            f"{state.nonfinite_in_a_row} steps in a row (up to step {state.step}) had a non-finite loss "
                            f"or gradient (last loss {outcome.loss}, grad norm {outcome.grad_norm}); lower train.lr, "
                            "use precision=fp32, or check the data. Resume from the last checkpoint in "
                            f"{run.path / 'checkpoints'}"
                        )
                if bar is not None:
                    bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                    tokens_per_s = window_tokens / window_seconds if window_seconds > 0 else 0.0
                    metrics = {
                        "step": state.step, "loss": outcome.loss, "lr": lr, "grad_norm": outcome.grad_norm,
                        "tokens": state.tokens_seen, "tokens_per_s": tokens_per_s,
                        "mfu": tokens_per_s * flops_per_token / (peak * dist.world_size) if peak else None,
                        "memory_gb": memory_gb(device), **outcome.metrics,
                    }
                    if hasattr(batches, "epochs_done"):
                        metrics["epoch"] = batches.epochs_done
                    run.log(metrics)
                    if bar is not None:
                        bar.set_postfix(loss=f"{outcome.loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                    window_tokens, window_seconds = 0, 0.0
                if distributed.any_rank(stop.signal_name is not None, device):
                    checkpoint_now()
                    status = "interrupted"
                    break
                if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.max_steps:
                    evaluate_now()
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    checkpoint_now()
            else:
                evaluate_now()
                if saved_step != state.step:
                    checkpoint_now()
                status = "finished"
        finally:
            if bar is not None:
                bar.close()
            run.record_energy(meter.as_dict())
            run.close(status)
    stopped = stop.signal_name if status == "interrupted" else None
    return TrainResult(model, state, metrics, eval_metrics, stopped)
