"""How long the demo's reward stage takes (budget: 90 s for both reward models, 2 idle cores),
and what it measures: `train_reward_models` on the demo world from a given checkpoint.

    python benchmarks/bench_reward.py --base runs/demo/01-pretrain            # offline pairs only
    python benchmarks/bench_reward.py --base runs/demo/04-sft --policy runs/demo/04-sft --threads 2
    python benchmarks/bench_reward.py --base ... --no-compare                # without the no-margin rerun

Prints the seconds of the whole call, of each reward model, and the held-out accuracies.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from llamaforge.stages.reward import train_reward_models
from llamaforge.world import World


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="checkpoint the reward models start from")
    parser.add_argument("--policy", default=None, help="sample fresh pairs from this checkpoint too")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compare", action="store_true", help="skip the margin vs no-margin rerun")
    parser.add_argument("--out", default="", help="output folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = World.generate(seed=0, size="demo")
    out = args.out or tempfile.mkdtemp(prefix="bench-reward-")
    started = time.perf_counter()
    summary = train_reward_models(args.base, world, out, policy=args.policy, compare_margin=not args.no_compare)
    seconds = time.perf_counter() - started
    metrics = summary["metrics"]
    print(f"train_reward_models: {seconds:.1f} s on {args.threads} threads ({out})")
    for key in ("helpfulness/seconds", "safety/seconds"):
        if key in metrics:
            print(f"  {key}: {metrics[key]:.1f} s")
    print(f"  {summary['effect']}")


if __name__ == "__main__":
    main()
