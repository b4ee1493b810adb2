"""Int8 weight-only decoding (`llamaforge.quantize`) against the model as it is, in one run.

Decode speed: batch 1, greedy, a 16-token prompt and 64 new tokens, random weights of each
config's shape, the two models taking turns; medians of the repetitions and their ratio.
Perplexity: with `--model` (a trained checkpoint and its tokenizer), on documents of the
built-in world (or `--texts FILE`, one text per line), before and after quantising.

    python benchmarks/int8_decode.py --threads 2
    python benchmarks/int8_decode.py --configs 110M --model runs/demo/03-pretrain
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch

from llamaforge.bench import CONFIGS
from llamaforge.generate import SamplingParams, generate
from llamaforge.model import Transformer
from llamaforge.quantize import int8_kernel_works, quantize_int8


def decode_tokens_per_s(model, prompt: list[int], new_tokens: int) -> float:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    start = time.perf_counter()
    out = generate(model, [prompt], params, eos_id=-1)
    return len(out[0].tokens) / (time.perf_counter() - start)


def decode_rows(configs: list[str], repeats: int, new_tokens: int) -> list[str]:
    rows = []
    for name in configs:
        torch.manual_seed(0)
        base = Transformer(CONFIGS[name].args()).eval()
        int8 = quantize_int8(copy.deepcopy(base))
        prompt = torch.randint(0, base.args.vocab_size, (16,), generator=torch.Generator().manual_seed(1)).tolist()
        models = {"as loaded (fp32)": base, "int8 weight-only": int8}
        for m in models.values():
            decode_tokens_per_s(m, prompt, 4)  # warm-up
        speeds = {k: [] for k in models}
        for r in range(repeats):
            for k in (list(models) if r % 2 == 0 else list(reversed(list(models)))):
                speeds[k].append(decode_tokens_per_s(models[k], prompt, new_tokens))
        ref = statistics.median(speeds["as loaded (fp32)"])
        for k, v in speeds.items():
            rows.append(f"| {name} | decode b1 | {k} | {statistics.median(v):,.0f} tok/s | {statistics.median(v) / ref:.2f}x |")
    return rows


def perplexity_rows(model_dir: str, texts_file: str | None, documents: int) -> list[str]:
    from llamaforge.checkpoint import load_model
    from llamaforge.eval.harness import perplexity
    from llamaforge.stages.rejection import policy_tokenizer

    model = load_model(model_dir).eval()
    _, tok = policy_tokenizer(model_dir)
    if texts_file:
        texts = [line for line in open(texts_file, encoding="utf-8").read().splitlines() if line.strip()][:documents]
    else:
        from llamaforge.world import World

        texts = list(itertools.islice(World.generate(seed=0, size="demo").pretraining_documents(shuffle=False), documents))
    before = perplexity(model, tok, texts)
    after = perplexity(quantize_int8(model), tok, texts)
    return [f"| {model_dir} | perplexity on {len(texts)} texts | as loaded | {before:.4f} | |",
            f"| {model_dir} | perplexity on {len(texts)} texts | int8 weight-only | {after:.4f} | {after / before - 1:+.2%} |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["stories15M", "110M"], choices=sorted(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", help="a trained checkpoint for the perplexity change")
    p.add_argument("--texts", help="one text per line for the perplexity (default: the built-in world's documents)")
    p.add_argument("--documents", type=int, default=300)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, int8 kernel: "
          f"{'torch._weight_int8pack_mm' if int8_kernel_works('cpu') else 'dequantised matmul (slow)'}\n")
    print("| config | measurement | model | value | vs as loaded |\n|---|---|---|---|---|")
    for row in decode_rows(args.configs, args.repeats, args.new_tokens):
        print(row, flush=True)
    if args.model:
        for row in perplexity_rows(args.model, args.texts, args.documents):
            print(row, flush=True)


if __name__ == "__main__":
    main()
