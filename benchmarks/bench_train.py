"""Training throughput: llamaforge's Transformer vs transformers' LlamaForCausalLM.

Both models get the same shapes, the same weights (llamaforge's, written as a Hugging Face
checkpoint and read back by `from_pretrained`), the same token batches, the same thread
count and the same training step: the core's `backward_and_step` (AdamW, clipping), so the
only difference is the model. Repetitions alternate between the two so that drift in the
machine's speed hits both alike; medians are reported, with the measured fp32 (or bf16)
matmul rate of this machine and the MFU each model reaches against it.

    python benchmarks/bench_train.py                       # both configs, fp32, all cores
    python benchmarks/bench_train.py --threads 2 --precision bf16 --configs gqa
    python benchmarks/bench_train.py --profile             # top operators of llamaforge's step
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from llamaforge.checkpoint import save_model
from llamaforge.model import ModelArgs, Transformer
from llamaforge.trainer import (
    LossOutput, TrainConfig, backward_and_step, build_optimizer, causal_lm_loss, measure_matmul_flops,
    transformer_flops_per_token,
)
from llamaforge.losses import masked_lm_loss

CONFIGS = {
    # llama2.c's stories15M shapes with Llama 2's vocabulary.
    "stories15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, multiple_of=32),
    # Grouped-query attention: 4 query heads per KV head.
    "gqa": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, vocab_size=32000, multiple_of=32),
}


def hf_loss(model, batch) -> LossOutput:
    logits = model(input_ids=batch["inputs"], use_cache=False).logits
    targets = batch["targets"]
    return LossOutput(masked_lm_loss(logits, targets, reduction="sum"), targets.numel())


def timed_steps(model, loss_fn, batches, steps: int, cfg: TrainConfig, precision: str) -> float:
    """Seconds for `steps` optimizer steps (after the optimizer exists and is warm)."""
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    backward_and_step(model, optimizer, iter(batches), loss_fn, cfg, cfg.lr, torch.device("cpu"), precision)
    start = time.perf_counter()
    for i in range(steps):
        backward_and_step(model, optimizer, iter([batches[i % len(batches)]]), loss_fn, cfg, cfg.lr,
                          torch.device("cpu"), precision)
    return time.perf_counter() - start


def bench_config(name: str, args: ModelArgs, batch: int, steps: int, repeats: int, precision: str, peak: float) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ours = Transformer(args)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(ours, Path(tmp) / "hf", format="hf")
        theirs = LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", attn_implementation="sdpa", dtype=torch.float32)
    ours.train()
    theirs.train()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(max(steps, 1)):
        x = torch.randint(0, args.vocab_size, (batch, args.max_seq_len + 1), generator=g)
        batches.append({"inputs": x[:, :-1], "targets": x[:, 1:]})
    with torch.no_grad():  # same weights, same function
        torch.testing.assert_close(ours(batches[0]["inputs"][:1]), theirs(input_ids=batches[0]["inputs"][:1]).logits,
                                   rtol=1e-4, atol=1e-4)
    cfg = TrainConfig(lr=1e-4, warmup_steps=0, grad_clip=1.0)
    times = {"llamaforge": [], "transformers": []}
    for _ in range(repeats):
        times["llamaforge"].append(timed_steps(ours, causal_lm_loss, batches, steps, cfg, precision))
        times["transformers"].append(timed_steps(theirs, hf_loss, batches, steps, cfg, precision))
    tokens = steps * batch * args.max_seq_len
    flops_per_token = transformer_flops_per_token(args, args.max_seq_len)
    result = {"config": name, "params": args.num_params()}
    for model, seconds in times.items():
        rate = tokens / statistics.median(seconds)
        result[model] = {"tokens_per_s": rate, "mfu": rate * flops_per_token / peak,
                         "runs_tokens_per_s": [round(tokens / s) for s in seconds]}
    result["ratio"] = result["llamaforge"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    return result


def profile_step(args: ModelArgs, batch: int, precision: str, top: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = Transformer(args).train()
    x = torch.randint(0, args.vocab_size, (batch, args.max_seq_len + 1))
    batches = [{"inputs": x[:, :-1], "targets": x[:, 1:]}]
    cfg = TrainConfig(lr=1e-4, warmup_steps=0)
    timed_steps(model, causal_lm_loss, batches, 1, cfg, precision)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_steps(model, causal_lm_loss, batches, 2, cfg, precision)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions per model")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--profile", action="store_true", help="print the top operators of llamaforge's step")
    opts = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        print("this benchmark compares against transformers: pip install 'llamaforge[hf]'", file=sys.stderr)
        return 1

    torch.set_num_threads(opts.threads)
    dtype = torch.bfloat16 if opts.precision == "bf16" else torch.float32
    peak = measure_matmul_flops(torch.device("cpu"), dtype, size=1024, seconds=2.0, trials=10)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {opts.threads} threads, "
          f"{opts.precision}; measured {opts.precision} matmul (1024^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"batch {opts.batch} x {opts.seq_len} tokens, {opts.steps} steps x {opts.repeats} alternating repetitions")
    for name in opts.configs:
        args = ModelArgs(**CONFIGS[name], max_seq_len=opts.seq_len)
        r = bench_config(name, args, opts.batch, opts.steps, opts.repeats, opts.precision, peak)
        print(f"\n{name}: {r['params'] / 1e6:.1f}M parameters (dim {args.dim}, {args.n_layers} layers, "
              f"{args.n_heads} heads, {args.kv_heads} KV heads, vocab {args.vocab_size})")
        for model in ("llamaforge", "transformers"):
            m = r[model]
            print(f"  {model:<13} {m['tokens_per_s']:8,.0f} tokens/s  MFU {100 * m['mfu']:5.1f}%  "
                  f"runs {m['runs_tokens_per_s']}")
        print(f"  llamaforge / transformers: {r['ratio']:.3f}")
        if opts.profile:
            print(profile_step(args, opts.batch, opts.precision))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
