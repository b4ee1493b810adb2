"""Serving benchmark: latency and throughput of `llamaforge serve` under concurrent clients.

Starts the real server (`python -m llamaforge.serve`) on 127.0.0.1 in a subprocess, twice:
with continuous batching (--max-batch 32) and one request at a time (--max-batch 1), and drives
each with 1, 8 and 32 closed-loop streaming clients. Reports p50/p95 request latency, p50 time
to first token and generated tokens/s. Then a load test: 50 clients for 30 s against a bounded
queue; every answer must be a 200 or a deliberate 503, and the server must still be up.

    python benchmarks/bench_serve.py                     # random stories15M-shaped model
    python benchmarks/bench_serve.py --model PATH        # a real checkpoint (tokenizer beside it)
    python benchmarks/bench_serve.py --duration 5 --load-duration 10   # quicker

Writes benchmarks/out/bench_serve.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import httpx

WORDS = "the cat dog sat ran on a mat big small red blue house tree and then".split()


def make_checkpoint(folder: Path, preset: str, max_seq_len: int) -> Path:
    """A random-weight model of `preset`'s shape, saved as a Meta checkpoint with a tokenizer."""
    import torch

    from llamaforge.checkpoint import save_model
    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import train_tokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {rng.randint(0, 999)}." for _ in range(3000)]
    tok = train_tokenizer(iter(lines), folder / "tokenizer.model", vocab_size=320)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset(preset, vocab_size=tok.vocab_size, max_seq_len=max_seq_len))
    save_model(model, folder / f"random-{preset}", format="meta")
    return folder / f"random-{preset}"


@contextmanager
def server(model: Path, *extra: str):
    """The server in a subprocess; yields (base URL, model name, process)."""
    cmd = [sys.executable, "-m", "llamaforge.serve", str(model), "--port", "0", "--log-level", "error", *extra]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if " on http" not in line:
            raise RuntimeError(f"the server did not start: {line!r}")
        url = line.split(" on ")[1].split()[0]
        name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        yield url, name, process
    finally:
        process.terminate()
        process.wait(timeout=30)


async def one_request(http: httpx.AsyncClient, name: str, rng: random.Random, max_tokens: int) -> dict:
    """A streamed chat completion; returns status, latency, time to first token, tokens."""
    question = " ".join(rng.choices(WORDS, k=rng.randint(4, 16)))
    body = {"model": name, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"status": response.status_code, "retry_after": float(response.headers.get("Retry-After", 0))}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"status": 500}
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"status": 200, "latency": time.perf_counter() - start, "ttft": first, "tokens": tokens}


async def drive(url: str, name: str, clients: int, duration: float, max_tokens) -> dict:
    """`clients` closed-loop clients for `duration` seconds; a 503 waits Retry-After and tries again."""
    results: list[dict] = []

    async def client(seed: int, until: float) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while time.perf_counter() < until:
                try:
                    result = await one_request(http, name, rng, max_tokens(rng))
                except httpx.HTTPError as e:
                    result = {"status": f"transport error: {type(e).__name__}"}
                results.append(result)
                if result["status"] == 503:
                    await asyncio.sleep(result["retry_after"] or 0.5)

    start = time.perf_counter()
    await asyncio.gather(*(client(seed, start + duration) for seed in range(clients)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["status"] == 200]
    latencies = sorted(r["latency"] for r in ok)
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    return {
        "clients": clients, "seconds": round(wall, 2), "requests": len(ok),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "p50_latency_s": round(percentile(latencies, 50), 3), "p95_latency_s": round(percentile(latencies, 95), 3),
        "p50_ttft_s": round(percentile(ttfts, 50), 3),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="checkpoint to serve (default: a random model of --preset's shape)")
    p.add_argument("--preset", default="stories15M")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request in the latency runs")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per latency run")
    p.add_argument("--load-clients", type=int, default=50)
    p.add_argument("--load-duration", type=float, default=30.0)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "bench_serve.json"))
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    report: dict = {"model": args.model or f"random {args.preset}", "max_tokens": args.max_tokens,
                    "cpu_count": os.cpu_count(), "runs": [], "load": None}

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_checkpoint(Path(tmp), args.preset, args.max_seq_len)
        fixed = lambda rng: args.max_tokens  # noqa: E731
        for mode, flags in [("batched", ["--max-batch", str(max(levels))]), ("sequential", ["--max-batch", "1"])]:
            with server(model, *flags, "--max-queue", "256") as (url, name, _):
                asyncio.run(drive(url, name, 2, 3, fixed))  # warm up
                for clients in levels:
                    run = {"mode": mode, **asyncio.run(drive(url, name, clients, args.duration, fixed))}
                    report["runs"].append(run)
                    print(json.dumps(run), flush=True)

        # The load test: more clients than batch slots plus queue, so the bound is exercised.
        with server(model, "--max-batch", "16", "--max-queue", "16", "--timeout", "60") as (url, name, process):
            load = asyncio.run(drive(url, name, args.load_clients, args.load_duration,
                                     lambda rng: rng.randint(1, args.max_tokens)))
            health = httpx.get(url + "/health").json()
            metrics = httpx.get(url + "/metrics").text
            load.update(server_alive=process.poll() is None, health=health["status"],
                        unexpected=sorted(s for s in load["statuses"] if s not in ("200", "503")),
                        engine_errors=_metric(metrics, "llamaforge_engine_errors_total"))
            report["load"] = load
            print(json.dumps(load), flush=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(_markdown(report))
    load = report["load"]
    return 0 if load["server_alive"] and not load["unexpected"] and load["engine_errors"] == 0 else 1


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _markdown(report: dict) -> str:
    lines = [f"Model: {report['model']}, {report['max_tokens']} tokens per request, {report['cpu_count']} CPUs.", "",
             "| mode | clients | requests | p50 latency (s) | p95 latency (s) | p50 first token (s) | tokens/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['p50_latency_s']} | {r['p95_latency_s']} "
                     f"| {r['p50_ttft_s']} | {r['tokens_per_s']} |")
    load = report["load"]
    lines += ["", f"Load: {load['clients']} clients for {load['seconds']} s: statuses {load['statuses']}, "
              f"p50 {load['p50_latency_s']} s, p95 {load['p95_latency_s']} s, {load['tokens_per_s']} tokens/s; "
              f"server alive: {load['server_alive']}, health: {load['health']}, "
              f"engine errors: {load['engine_errors']:g}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
