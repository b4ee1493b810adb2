"""`llamaforge bench`: llamaforge against Hugging Face `transformers`, measured in one run.

Both models get the same weights (llamaforge's, converted to `LlamaForCausalLM` in memory),
the same inputs, dtype and thread count, and their repetitions alternate (in alternating
order), so that a machine that speeds up or slows down during the run hits both alike.
Medians are reported, with the ratio to transformers measured in the same run.

- training: tokens/s of forward + next-token loss + backward + AdamW step (the same fused
  AdamW for both; each model computes its loss its own way: transformers from its logits,
  llamaforge with `model(tokens, targets=...)`), MFU against the fp32 (or bf16) matmul rate
  measured at the start of the run, and peak memory of a training step (CPU: peak RSS of a
  fresh subprocess per model; GPU: the allocator's peak);
- generation (greedy, KV cache on both, `generate` on both): time to first token at batch 1,
  prefill tokens/s at batch 8, decode tokens/s at batch 1 and 8, taken as
  (new tokens - 1) / (time for all new tokens - time for the first); each decode row also
  gives its share of the memory-bandwidth bound (bytes read per step, weights and KV cache, /
  the read bandwidth measured in the same run). On CPU a third row, "llamaforge layout held",
  is a copy of the model kept in the decode layout between calls, as `llamaforge chat`,
  `generate` and `serve` keep it; a plain `generate()` call with 8 decode steps or more after
  the first token copies the weights into that layout and back out (`cpu_kernels.decode_layout`).

    llamaforge bench --quick                      # stories15M, a few minutes on 2 CPU cores
    llamaforge bench --configs stories15M gqa 110M --compile --out results.md
    llamaforge bench --device cuda --configs 7B   # random 7B-shaped weights, bf16 decode
    llamaforge bench --device cuda --configs 1B --suites train --compile   # ~1B bf16 training MFU
    benchmarks/gpu_check.sh tests train           # the GPU checks, in parts sized for short leases
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from .cpu_kernels import cpu_has_bf16_matmul, keep_freed_memory, onednn_matmuls, use_decode_layout
from .model import ModelArgs, Transformer


@dataclass(frozen=True)
class BenchConfig:
    name: str
    model: dict[str, Any]
    batch: int = 8  # training batch
    seq_len: int = 256  # training sequence length
    prompt_len: int = 128  # generation prompt
    new_tokens: int = 128  # generated per prompt
    gpu_only: bool = False
    train: bool = True
    checkpointing: bool = True  # also time a run with activation checkpointing (another model copy in memory)
    precisions: tuple[str, ...] = ("fp32", "bf16")  # those it runs in, of the ones asked for

    def args(self) -> ModelArgs:
        return ModelArgs(**{"vocab_size": 32000, "multiple_of": 32, **self.model})


CONFIGS = {
    # llama2.c's TinyStories shapes with Llama 2's 32000-token vocabulary.
    "stories15M": BenchConfig("stories15M", dict(dim=288, n_layers=6, n_heads=6, max_seq_len=256)),
    "gqa": BenchConfig("gqa", dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=256)),
    "110M": BenchConfig("110M", dict(dim=768, n_layers=12, n_heads=12, max_seq_len=256)),
    # Llama 2 7B's shape with random weights; training (fp32 AdamW state: 108 GB) is skipped.
    "7B": BenchConfig(
        "7B", dict(dim=4096, n_layers=32, n_heads=32, multiple_of=256, max_seq_len=4096),
        batch=1, seq_len=2048, prompt_len=512, new_tokens=128, gpu_only=True, train=False, precisions=("bf16",),
    ),
    # ~1B parameters (dim 2048, 16 layers, FFN 5632, vocab 32000: 0.95B) for GPU training MFU in bf16
    # with flash attention and compile. Each timed variant holds fp32 weights, gradients and AdamW
    # state (15 GB), so the activation-checkpointing copy is left out.
    "1B": BenchConfig(
        "1B", dict(dim=2048, n_layers=16, n_heads=16, multiple_of=256, max_seq_len=2048),
        batch=4, seq_len=2048, prompt_len=512, new_tokens=128, gpu_only=True, checkpointing=False,
        precisions=("bf16",),
    ),
    # For tests of this module: seconds on any machine.
    "tiny": BenchConfig(
        "tiny", dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64),
        batch=2, seq_len=32, prompt_len=8, new_tokens=4,
    ),
}

TRANSFORMERS = "transformers"
LLAMAFORGE = "llamaforge"
HELD = "layout held"  # the CPU decode layout kept between calls, as chat/serve keep it


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timer:
    """Times candidates in alternation. On a shared CPU, each round first waits (at most
    `quiet_wait` seconds) until other processes leave the cores idle: two threads that share
    their cores with a third process slow down by 2x to 100x, and not alike."""

    device: torch.device
    repeats: int = 5
    quiet_wait: float = 0.0
    rounds: int = 0
    busy_rounds: int = 0  # rounds that started while other processes kept the CPUs busy

    def alternate(self, fns: dict[str, Callable[[], Any]], warmup: int = 1) -> dict[str, list[float]]:
        """Seconds of each call, `repeats` times, the candidates taking turns (order reversed
        every other round). Each is called `warmup` times first (its first call may compile)."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(self.repeats):
            self.wait_for_quiet()
            for name in list(fns) if r % 2 == 0 else reversed(list(fns)):
                _sync(self.device)
                start = time.perf_counter()
                fns[name]()
                _sync(self.device)
                times[name].append(time.perf_counter() - start)
        return times

    def wait_for_quiet(self) -> None:
        self.rounds += 1
        if self.device.type != "cpu" or self.quiet_wait <= 0:
            return
        deadline = time.monotonic() + self.quiet_wait
        while cpu_busy_fraction() > 0.15:
            if time.monotonic() > deadline:
                self.busy_rounds += 1
                return


def cpu_busy_fraction(interval: float = 0.25) -> float:
    """Share of all CPUs' time spent busy over `interval` s (while this process sleeps)."""
    try:
        with open("/proc/stat") as f:
            before = [int(x) for x in f.readline().split()[1:]]
        time.sleep(interval)
        with open("/proc/stat") as f:
            after = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    delta = [b - a for a, b in zip(before, after)]
    idle = delta[3] + delta[4]  # idle + iowait
    return 1.0 - idle / max(1, sum(delta))


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- models


def build_pair(cfg: BenchConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """llamaforge's Transformer with random weights and the same weights in LlamaForCausalLM
    (SDPA attention), or (model, None) when transformers is not installed."""
    torch.manual_seed(seed)
    args = cfg.args()
    with torch.device(device):
        ours = Transformer(args).to(dtype)
    return ours, hf_copy(ours, dtype)


def hf_config(args: ModelArgs, dtype: torch.dtype):
    import transformers

    from .checkpoint import args_to_hf_config

    config = args_to_hf_config(args, dtype)
    config.pop("torch_dtype")
    return transformers.LlamaConfig(**config, attn_implementation="sdpa")


def hf_copy(ours: Transformer, dtype: torch.dtype):
    try:
        import transformers
    except ImportError:
        return None
    from .checkpoint import meta_to_hf_name, permute_to_hf

    args, device = ours.args, ours.output.weight.device
    config = hf_config(args, dtype)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    state = {}
    for name, tensor in ours.state_dict().items():
        if name.endswith("attention.wq.weight"):
            tensor = permute_to_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_to_hf(tensor, args.kv_heads)
        state[meta_to_hf_name(name)] = tensor.detach().clone()
    hf.load_state_dict(state, assign=True)
    # The rotary inverse frequencies are a buffer outside the state dict, still on `meta`.
    with torch.device(device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=config)
    hf.generation_config.eos_token_id = None  # generate exactly the asked number of tokens
    hf.generation_config.pad_token_id = 0
    return hf


def clone_model(model: Transformer) -> Transformer:
    with torch.device("meta"):
        copy = Transformer(model.args)
    copy.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, assign=True)
    return copy.to(model.output.weight.device)


# --------------------------------------------------------------------------- training


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same AdamW for every model: the fused kernel (CPU and GPU) where torch has it."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)


def ours_loss(model, inputs, targets):
    return model(inputs, targets=targets) / targets.numel()


def hf_loss(model, inputs, targets):
    # transformers' own causal-LM loss (logits upcast to fp32, cross-entropy) on given targets.
    return model(input_ids=inputs, labels=targets, shift_labels=targets, use_cache=False).loss


def training_step(model, loss_fn, optimizer, inputs, targets, precision: str) -> Callable[[], float]:
    device = inputs.device

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
            loss = loss_fn(model, inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def training_candidates(
    cfg: BenchConfig, device: torch.device, precision: str, *, compile: bool, checkpointing: bool
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """name -> one training step, and notes (compile time) for the report."""
    ours, hf = build_pair(cfg, device, torch.float32)
    g = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, cfg.args().vocab_size, (cfg.batch, cfg.seq_len + 1), generator=g).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].contiguous()
    steps: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}
    if hf is not None:
        hf.train()
        steps[TRANSFORMERS] = training_step(hf, hf_loss, make_optimizer(hf), inputs, targets, precision)
    variants = [(LLAMAFORGE, ours)]
    if compile:
        variants.append((f"{LLAMAFORGE} compiled", clone_model(ours)))
    if checkpointing:
        variants.append((f"{LLAMAFORGE} act. checkpointing", clone_model(ours)))
    for name, model in variants:
        model.train()
        model.activation_checkpointing = "checkpointing" in name
        steps[name] = training_step(model, ours_loss, make_optimizer(model), inputs, targets, precision)
        if "compiled" in name:
            # Each block is compiled (one graph, reused by every layer); the chunked loss stays eager.
            for layer in model.layers:
                layer.compile()
            start = time.perf_counter()
            steps[name]()
            notes[name] = f"compile + first step {time.perf_counter() - start:.0f} s"
    first = {name: float(step()) for name, step in steps.items()}
    notes["first losses"] = ", ".join(f"{k}: {v:.4f}" for k, v in first.items())
    return steps, notes


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    from .trainer import transformer_flops_per_token

    return transformer_flops_per_token(args, seq_len)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] | None = None, *,
                torch_only: bool = False) -> float:
    """Best achieved FLOP/s of square matmuls (default 2048 and 4096 on CPU, 8192 on GPU), by
    any kernel at hand (torch_only: torch.matmul's)."""
    from .trainer import measure_matmul_flops

    sizes = sizes or ((2048, 4096) if device.type == "cpu" else (8192,))
    return max(measure_matmul_flops(device, dtype, size=n, seconds=2.0 if n > 1024 else 0.2, torch_only=torch_only)
               for n in sizes)


def bench_training(cfg, timer: Timer, precision, peak, *, compile, checkpointing) -> list[dict[str, Any]]:
    steps, notes = training_candidates(cfg, timer.device, precision, compile=compile, checkpointing=checkpointing)
    times = timer.alternate(steps)
    tokens = cfg.batch * cfg.seq_len
    per_token = flops_per_token(cfg.args(), cfg.seq_len)
    rows = []
    for name, ts in times.items():
        tps = tokens / _median(ts)
        rows.append({
            "config": cfg.name, "what": f"train {precision}", "impl": name, "tokens_per_s": tps,
            "best_tokens_per_s": tokens / min(ts), "mfu": tps * per_token / peak, "note": notes.get(name, ""),
        })
    _add_ratios(rows, "tokens_per_s")
    rows.append({"config": cfg.name, "what": f"train {precision}", "impl": "note", "note": notes["first losses"]})
    return rows


# --------------------------------------------------------------------------- memory


def training_peak_memory(cfg: BenchConfig, device: torch.device, impl: str, precision: str) -> dict[str, float]:
    """Peak memory (MiB) of training steps: the model with gradients, AdamW state and
    activations. CPU: a fresh subprocess's peak RSS, minus its RSS before the model exists."""
    if device.type == "cuda":
        return _gpu_training_memory(cfg, device, impl, precision)
    cmd = [sys.executable, "-m", "llamaforge.bench", "--_memory-child", json.dumps([cfg.name, impl, precision])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {impl} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_mib(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: that one survives exec and
    so starts at the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(spec: str) -> int:
    name, impl, precision = json.loads(spec)
    import transformers  # noqa: F401  (in both children, so that their baselines match)

    keep_freed_memory()  # as in the timed runs, for both implementations
    base = _status_mib("VmRSS")
    step, _ = _single_candidate(CONFIGS[name], torch.device("cpu"), impl, precision)
    for _ in range(2):
        step()
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak_mib": peak, "base_mib": base, "train_mib": peak - base}))
    return 0


def _single_candidate(cfg: BenchConfig, device: torch.device, impl: str, precision: str):
    """One model (random weights: memory does not depend on their values) and its step."""
    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, cfg.args().vocab_size, (cfg.batch, cfg.seq_len + 1), generator=g).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].contiguous()
    with torch.device(device):
        if impl == TRANSFORMERS:
            import transformers

            model, loss_fn = transformers.LlamaForCausalLM(hf_config(cfg.args(), torch.float32)), hf_loss
        else:
            model, loss_fn = Transformer(cfg.args()), ours_loss
            model.activation_checkpointing = "checkpointing" in impl
    model.train()
    return training_step(model, loss_fn, make_optimizer(model), inputs, targets, precision), model


def _gpu_training_memory(cfg, device, impl, precision) -> dict[str, float]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) / 2**20
    step, model = _single_candidate(cfg, device, impl, precision)
    for _ in range(2):
        step()
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    del step, model
    torch.cuda.empty_cache()
    return {"peak_mib": peak, "base_mib": base, "train_mib": peak - base}


def bench_memory(cfg, device, precision, impls: list[str]) -> list[dict[str, Any]]:
    rows = []
    for impl in impls:
        m = training_peak_memory(cfg, device, impl, precision)
        rows.append({"config": cfg.name, "what": f"train {precision} peak memory", "impl": impl,
                     "peak_mib": m["peak_mib"], "train_mib": m["train_mib"]})
    _add_ratios(rows, "train_mib")
    return rows


# --------------------------------------------------------------------------- generation


def generation_candidates(ours: Transformer, hf, *, compile: bool) -> dict[str, Callable[[torch.Tensor, int], Any]]:
    """name -> fn(prompts [B, P], new_tokens) generating greedily with a KV cache."""
    from .generate import SamplingParams, generate

    fns: dict[str, Callable[[torch.Tensor, int], Any]] = {}
    if hf is not None:
        hf.eval()

        def hf_generate(prompts, n):
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n, do_sample=False)
            return out[:, prompts.shape[1]:].tolist()

        fns[TRANSFORMERS] = hf_generate
    ours.eval()

    def ours_generate(prompts, n, compiled=False):
        out = generate(ours, prompts.tolist(), SamplingParams(max_new_tokens=n), compile=compiled)
        return [c.tokens for c in out]

    fns[LLAMAFORGE] = ours_generate
    if compile:
        fns[f"{LLAMAFORGE} compiled"] = lambda prompts, n: ours_generate(prompts, n, compiled=True)
    if next(ours.parameters()).device.type == "cpu":
        # As `llamaforge chat/generate/serve` run it: a copy of the model kept in the decode layout
        # for good, where each generate() call above copies its weights in and back out.
        held = copy.deepcopy(ours)
        if use_decode_layout(held):
            fns[f"{LLAMAFORGE} {HELD}"] = lambda prompts, n: [
                c.tokens for c in generate(held, prompts.tolist(), SamplingParams(max_new_tokens=n))]
    return fns


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter and persistent buffer (an int8
    model's weights and scales) except the token embedding table, of which a step reads one row
    per sequence (a tied output layer reads it all). Shared tensors count once."""
    embedding = getattr(model, "tok_embeddings", None)
    skip = set()
    if embedding is not None and embedding.weight is not model.output.weight:
        skip.add(embedding.weight.data_ptr())
    # The state dict: parameters and persistent buffers, not the KV cache; keyed by storage.
    tensors = {t.data_ptr(): t for t in model.state_dict().values() if t.data_ptr() not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def kv_cache_read_bytes(args: ModelArgs, batch: int, positions: float, element_size: int) -> float:
    """Bytes of keys and values a decode step reads from the cache at `positions` cached tokens."""
    return 2 * args.n_layers * batch * args.kv_heads * args.head_dim * element_size * positions


# Datasheet HBM bandwidth (bytes/s), most specific name first: the stricter bound of the decode rows.
GPU_BANDWIDTH = {"H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "H200": 4.8e12,
                 "A100-SXM4-80GB": 2.04e12, "A100": 1.56e12}


def datasheet_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in GPU_BANDWIDTH.items() if key in name), None)


def memory_read_bandwidth(device: torch.device, nbytes: int | None = None, trials: int = 5, reads: int = 4) -> float:
    """Best achieved bytes/s reading one large tensor (`reads` sums over it per timing: 512 MiB
    on CPU, 4 GiB on a GPU, far past any cache): a practical rate, not a ceiling (a good
    matrix-vector kernel can beat a sum). The decode rows report their bytes per step against it."""
    nbytes = nbytes or (512 << 20 if device.type == "cpu" else 4 << 30)
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    x.sum()
    best = float("inf")
    for _ in range(trials):
        _sync(device)
        start = time.perf_counter()
        for _ in range(reads):
            x.sum()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / reads)
    return x.numel() * 4 / best


def bench_generation(cfg, timer: Timer, dtype, *, compile: bool, bandwidth: float | None = None,
                     batches: tuple[int, ...] = (1, 8)) -> list[dict[str, Any]]:
    """Prefill, decode and time-to-first-token rows. With `bandwidth` (bytes/s), decode rows also
    carry `bandwidth_bound`: steps/s x bytes read per step / bandwidth (1.0 = a step does nothing
    but read at that rate), the bytes being the weights plus the KV cache at its mean length over
    the timed steps; `datasheet_bound` likewise against the GPU's datasheet bandwidth."""
    device = timer.device
    ours, hf = build_pair(cfg, device, dtype)
    weight_bytes = decode_weight_bytes(ours)
    datasheet = datasheet_bandwidth(device)
    fns = generation_candidates(ours, hf, compile=compile)
    vocab, P, N = cfg.args().vocab_size, cfg.prompt_len, cfg.new_tokens
    g = torch.Generator(device="cpu").manual_seed(2)
    prompts = {b: torch.randint(3, vocab, (b, P), generator=g).to(device) for b in sorted({1, *batches})}
    what = str(dtype).removeprefix("torch.")
    rows = []
    agree = {}
    for name, fn in fns.items():
        agree[name] = fn(prompts[1], 8)[0]
    first_tokens = {}
    for b in batches:
        one = timer.alternate({k: (lambda f=f: f(prompts[b], 1)) for k, f in fns.items()})
        full = timer.alternate({k: (lambda f=f: f(prompts[b], N)) for k, f in fns.items()})
        for name in fns:
            t1, tn = _median(one[name]), _median(full[name])
            if b == 1:
                first_tokens[name] = t1
            rows.append({"config": cfg.name, "what": f"prefill {what} b{b}", "impl": name, "tokens_per_s": b * P / t1})
            decode = {"config": cfg.name, "what": f"decode {what} b{b}", "impl": name,
                      "tokens_per_s": b * (N - 1) / max(tn - t1, 1e-9)}
            if bandwidth:
                # The timed steps (2nd to Nth new token) attend to P+1 .. P+N-1 cached positions.
                step_bytes = weight_bytes + kv_cache_read_bytes(cfg.args(), b, P + N / 2, dtype.itemsize)
                decode["bandwidth_bound"] = decode["tokens_per_s"] / b * step_bytes / bandwidth
                if datasheet:
                    decode["datasheet_bound"] = decode["tokens_per_s"] / b * step_bytes / datasheet
            rows.append(decode)
    for name, t in first_tokens.items():
        rows.append({"config": cfg.name, "what": f"time to first token {what} b1 (ms)", "impl": name, "ms": 1e3 * t})
    for what_ in sorted({r["what"] for r in rows}):
        _add_ratios([r for r in rows if r["what"] == what_], "ms" if "(ms)" in what_ else "tokens_per_s",
                    lower_is_better="(ms)" in what_)
    ref = agree.get(TRANSFORMERS)
    note = "greedy tokens agree with transformers" if ref is None or all(v == ref for v in agree.values()) else (
        "greedy tokens differ from transformers: " + json.dumps(agree))
    rows.append({"config": cfg.name, "what": f"generate {what}", "impl": "note", "note": note})
    return rows


# --------------------------------------------------------------------------- report


def _add_ratios(rows: list[dict[str, Any]], key: str, lower_is_better: bool = False) -> None:
    """vs_transformers: how many times better than transformers (>1 = llamaforge is better)."""
    ref = next((r[key] for r in rows if r["impl"] == TRANSFORMERS), None)
    for r in rows:
        if ref and r.get(key):
            r["vs_transformers"] = ref / r[key] if lower_is_better else r[key] / ref


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if device.type == "cpu":
        env["llamaforge_fp32_matmuls"] = "oneDNN" if onednn_matmuls() else "torch default (MKL)"
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = "not installed"
    if hasattr(os, "getloadavg"):
        env["load_average_start"] = round(os.getloadavg()[0], 2)
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"### {env['date']} — {env['device']} ({env['cpu']}, {env['cpu_capability']}), "
             f"{env['threads']} threads, torch {env['torch']}, transformers {env['transformers']}"
             + (f", llamaforge fp32 matmuls: {env['llamaforge_fp32_matmuls']}" if "llamaforge_fp32_matmuls" in env else ""),
             ""]
    peaks = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in report["matmul_peak"].items())
    if "matmul_peak_torch" in report:
        peaks += (f" (fp32 through torch.matmul's default kernel alone: "
                  f"{report['matmul_peak_torch']['fp32'] / 1e9:.0f} GFLOP/s; MFU is against the best)")
    lines.append(f"Matmul peak measured in this run: {peaks}. Load average (1 min) at start "
                 f"{env.get('load_average_start', '?')}, at end {env.get('load_average_end', '?')}; rounds that "
                 f"started while other processes kept the CPUs busy: {env.get('rounds_under_load', '?')}. "
                 f"Medians of {report['repeats']} alternating repetitions."
                 + (f" Memory read bandwidth measured in this run: {report['memory_bandwidth'] / 1e9:,.0f} GB/s"
                    + (f" (datasheet {report['datasheet_bandwidth'] / 1e9:,.0f} GB/s)" if report.get("datasheet_bandwidth") else "")
                    + "; a decode row's \"of bound\" is its steps/s x bytes read per step (weights, and the KV "
                    "cache at its mean length) / that bandwidth." if report.get("memory_bandwidth") else ""))
    lines.append("")
    lines.append("| config | measurement | implementation | value | vs transformers | MFU / of bound | note |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        if r["impl"] == "note":
            lines.append(f"| {r['config']} | {r['what']} | | | | | {r['note']} |")
            continue
        if "tokens_per_s" in r:
            value = f"{r['tokens_per_s']:,.0f} tok/s"
        elif "ms" in r:
            value = f"{r['ms']:,.1f} ms"
        else:
            value = f"{r['train_mib']:,.0f} MiB (peak RSS {r['peak_mib']:,.0f})"
        ratio = f"{r['vs_transformers']:.2f}x" if "vs_transformers" in r else ""
        mfu = (f"{100 * r['mfu']:.0f}%" if "mfu" in r else
               f"{100 * r['bandwidth_bound']:.0f}% of bound" if "bandwidth_bound" in r else "")
        if "datasheet_bound" in r:
            mfu += f" ({100 * r['datasheet_bound']:.0f}% of the datasheet's)"
        lines.append(f"| {r['config']} | {r['what']} | {r['impl']} | {value} | {ratio} | {mfu} | {r.get('note', '')} |")
    for s in report.get("skipped", []):
        lines.append(f"\nSkipped: {s}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command


def run(
    configs: list[str], *, device: str = "cpu", suites=("train", "memory", "generate"), repeats: int = 5,
    precisions=("fp32", "bf16"), compile: bool = False, checkpointing: bool = True, quiet_wait: float = 0.0,
    batches: tuple[int, ...] = (1, 8),
    peak_sizes: tuple[int, ...] | None = None, log=print, report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of one run. Pass `report` (a dict) to keep the rows measured so far when the
    run is interrupted."""
    dev = torch.device(device)
    if dev.type == "cpu":
        keep_freed_memory()  # as llamaforge's trainer does; process-wide, so transformers' steps too
    timer = Timer(dev, repeats, quiet_wait)
    report = {} if report is None else report
    report.update({"environment": environment(dev), "repeats": repeats, "rows": [], "skipped": []})
    bf16_fast = dev.type == "cuda" or cpu_has_bf16_matmul()
    timer.wait_for_quiet()
    report["matmul_peak"] = {"fp32": matmul_peak(dev, torch.float32, peak_sizes)}
    if dev.type == "cpu" and onednn_matmuls():  # what transformers' (torch's default) kernels reach
        report["matmul_peak_torch"] = {"fp32": matmul_peak(dev, torch.float32, peak_sizes, torch_only=True)}
    if "bf16" in precisions:
        report["matmul_peak"]["bf16"] = matmul_peak(dev, torch.bfloat16, peak_sizes) if bf16_fast else _slow_bf16_rate(dev)
    for name in configs:
        cfg = CONFIGS[name]
        if cfg.gpu_only and dev.type != "cuda":
            report["skipped"].append(f"{name}: a GPU-only config")
            continue
        if not cfg.train and ("train" in suites or "memory" in suites):
            report["skipped"].append(f"{name} training: fp32 weights, gradients and AdamW state exceed one GPU")
        for precision in (p for p in precisions if p in cfg.precisions):
            if precision == "bf16" and not bf16_fast:
                report["skipped"].append(
                    f"{name} bf16: this CPU has no bf16 matrix units (AVX512-BF16/AMX); bf16 matmul runs at "
                    f"{report['matmul_peak']['bf16'] / 1e9:.1f} GFLOP/s, emulated")
                continue
            if "train" in suites and cfg.train:
                log(f"[{name}] training {precision} ...")
                report["rows"] += bench_training(cfg, timer, precision, report["matmul_peak"][precision],
                                                 compile=compile, checkpointing=checkpointing and cfg.checkpointing)
            if "memory" in suites and cfg.train and _has_transformers():
                log(f"[{name}] training memory {precision} ...")
                impls = [TRANSFORMERS, LLAMAFORGE] + ([f"{LLAMAFORGE} act. checkpointing"]
                                                      if checkpointing and cfg.checkpointing else [])
                report["rows"] += bench_memory(cfg, dev, precision, impls)
            if "generate" in suites:
                log(f"[{name}] generation {precision} ...")
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                if "memory_bandwidth" not in report:
                    timer.wait_for_quiet()
                    report["memory_bandwidth"] = memory_read_bandwidth(dev)
                    report["datasheet_bandwidth"] = datasheet_bandwidth(dev)
                report["rows"] += bench_generation(cfg, timer, dtype, compile=compile,
                                                   bandwidth=report["memory_bandwidth"], batches=batches)
    # Measured again at the end, the best of both: a busy start must not inflate the MFU.
    timer.wait_for_quiet()
    report["matmul_peak_end"] = {"fp32": matmul_peak(dev, torch.float32, peak_sizes)}
    peak = max(report["matmul_peak"]["fp32"], report["matmul_peak_end"]["fp32"])
    for row in report["rows"]:
        if "mfu" in row and row["what"] == "train fp32":
            row["mfu"] *= report["matmul_peak"]["fp32"] / peak
    report["matmul_peak"]["fp32"] = peak
    if hasattr(os, "getloadavg"):
        report["environment"]["load_average_end"] = round(os.getloadavg()[0], 2)
    report["environment"]["rounds_under_load"] = f"{timer.busy_rounds} of {timer.rounds}" if quiet_wait else "not checked"
    return report


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _slow_bf16_rate(device: torch.device) -> float:
    """bf16 matmul rate where it is emulated: one small matmul, so the run stays short."""
    a = torch.randn(256, 256, dtype=torch.bfloat16, device=device)
    a @ a
    start = time.perf_counter()
    a @ a
    return 2 * 256**3 / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="llamaforge bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS),
                   help="default: stories15M gqa 110M 7B 1B (7B and 1B on a GPU only); with --quick, stories15M")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--suites", nargs="+", choices=["train", "memory", "generate"], default=["train", "memory", "generate"])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=5, help="alternating repetitions per measurement")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                   help="generation batch sizes (with --compile each compiles once more; batch 1 always does: "
                        "the greedy tokens are compared with transformers' at batch 1)")
    p.add_argument("--compile", action="store_true", help="also time llamaforge with torch.compile")
    p.add_argument("--no-checkpointing", action="store_true", help="skip the activation-checkpointing rows")
    p.add_argument("--quick", action="store_true", help="stories15M only, 3 repetitions, 32 new tokens")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="CPU: before each round wait up to this many seconds for other processes to go idle")
    p.add_argument("--out", help="append the Markdown report to this file")
    p.add_argument("--json", help="write the full report as JSON to this file")
    p.add_argument("--_memory-child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if any(b < 1 for b in a.batches):
        p.error(f"--batches must be positive, got {a.batches}")
    if a._memory_child:
        return _memory_child(a._memory_child)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.compile:
        # One process compiles decoding for several models, batch sizes and prompt shapes.
        torch._dynamo.config.recompile_limit = 64
    configs, repeats = a.configs or ["stories15M", "gqa", "110M", "7B", "1B"], a.repeats
    if a.quick:
        configs = a.configs or ["stories15M"]
        repeats = min(repeats, 3)
        for name in configs:
            CONFIGS[name] = replace(CONFIGS[name], new_tokens=min(32, CONFIGS[name].new_tokens))
    # A time limit (`timeout` sends SIGTERM) or Ctrl-C still writes the rows measured so far.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    report: dict[str, Any] = {}
    interrupted = False
    try:
        run(configs, device=a.device, suites=a.suites, repeats=repeats, precisions=a.precisions,
            compile=a.compile, checkpointing=not a.no_checkpointing, quiet_wait=a.quiet_wait,
            batches=tuple(sorted(set(a.batches))), log=lambda m: print(m, file=sys.stderr), report=report)
    except KeyboardInterrupt:
        interrupted = True
        if "matmul_peak" not in report:
            return 130
        report["skipped"].append("the run was interrupted: the rows are those measured before")
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = markdown(report)
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if interrupted else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
