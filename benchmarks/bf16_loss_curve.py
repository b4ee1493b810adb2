"""Does bf16 autocast train like fp32? The same model, data and AdamW, 200 steps each way.

Both runs start from the same weights and see the same batches of a learnable stream (a
random sparse Markov chain: every token has a few likely successors, so the loss falls from
ln(vocab) towards the chain's entropy). Reports the largest relative gap between the two
loss curves (raw, and smoothed over 10 steps) and the step time of each. The issue's target:
within 2% of fp32 over 200 steps.

    python benchmarks/bf16_loss_curve.py                        # tiny model, minutes on a CPU
    python benchmarks/bf16_loss_curve.py --preset stories15M --vocab 32000 --device cuda

On a CPU without bf16 matrix units (AVX2 only) bf16 is emulated and slow; the loss curve is
still what the comparison is about.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from llamaforge.bench import make_optimizer
from llamaforge.cpu_kernels import keep_freed_memory
from llamaforge.model import ModelArgs, Transformer


def markov_batches(vocab: int, batch: int, seq_len: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, 4), generator=g)
    weights = torch.tensor([0.55, 0.25, 0.15, 0.05])
    batches = []
    for _ in range(steps):
        tokens = torch.empty(batch, seq_len + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(seq_len):
            pick = torch.multinomial(weights.expand(batch, 4), 1, generator=g).squeeze(1)
            tokens[:, t + 1] = successors[tokens[:, t], pick]
        batches.append(tokens)
    return batches


def train(model: Transformer, batches, device: torch.device, bf16: bool, lr: float) -> tuple[list[float], float]:
    optimizer = make_optimizer(model)
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses, start = [], time.perf_counter()
    for tokens in batches:
        tokens = tokens.to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:].contiguous()
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(inputs, targets=targets) / targets.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, (time.perf_counter() - start) / len(batches)


def smooth(xs: list[float], window: int = 10) -> list[float]:
    return [sum(xs[max(0, i - window + 1) : i + 1]) / len(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write both curves to this file")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        keep_freed_memory()  # as llamaforge's trainer does
    args = ModelArgs.from_preset(a.preset, vocab_size=a.vocab, max_seq_len=max(a.seq_len, 8))
    torch.manual_seed(0)
    with torch.device(device):
        fp32_model = Transformer(args)
        bf16_model = Transformer(args)
    bf16_model.load_state_dict(fp32_model.state_dict())
    batches = markov_batches(a.vocab, a.batch, a.seq_len, a.steps)
    fp32, fp32_step = train(fp32_model, batches, device, False, a.lr)
    bf16, bf16_step = train(bf16_model, batches, device, True, a.lr)
    raw = max(abs(b - f) / f for f, b in zip(fp32, bf16))
    smoothed = max(abs(b - f) / f for f, b in zip(smooth(fp32), smooth(bf16)))
    print(f"{a.preset} (vocab {a.vocab}), batch {a.batch} x {a.seq_len}, {a.steps} steps on {device}, torch {torch.__version__}")
    print("| step | fp32 loss | bf16-autocast loss | gap |")
    print("|---|---|---|---|")
    for i in sorted({0, 9, 24, 49, 99, 149, a.steps - 1}):
        if i < a.steps:
            print(f"| {i + 1} | {fp32[i]:.4f} | {bf16[i]:.4f} | {100 * (bf16[i] - fp32[i]) / fp32[i]:+.2f}% |")
    print(f"\nlargest gap over {a.steps} steps: {100 * raw:.2f}% per step, {100 * smoothed:.2f}% smoothed over 10 steps")
    print(f"step time: fp32 {1e3 * fp32_step:.1f} ms, bf16 autocast {1e3 * bf16_step:.1f} ms "
          f"({fp32_step / bf16_step:.2f}x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"fp32": fp32, "bf16": bf16, "max_gap": raw, "max_gap_smoothed": smoothed}, f)


if __name__ == "__main__":
    main()
