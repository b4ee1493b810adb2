"""How long `llamaforge report` takes on a run the size of the full demo (budget: 20 s).

Builds a synthetic run folder shaped like `make demo`'s — ten stage folders, the RLHF loop's
rounds with their reward models, rejection sampling and PPO nested inside, a trainer log per
training run, every stage's summary with tables and plots — then times `build_report` on it.

    python benchmarks/bench_report.py                 # prints seconds and the number of figures
    python benchmarks/bench_report.py --run runs/demo # time a real run folder instead
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

from llamaforge.report import build_report, write_json, write_summary


def _log(path: Path, steps: int, rng: random.Random, extra: tuple[str, ...] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss": 3 * math.exp(-s / steps) + rng.random() * 0.1, **{k: rng.random() for k in extra}}
            for s in range(1, steps + 1)]
    rows += [{"step": s, "val_loss": 3 * math.exp(-s / steps)} for s in range(steps // 4, steps + 1, steps // 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _energy(hours: float) -> dict:
    return {"device": "cpu", "n_devices": 1, "device_hours": hours, "power_watts": 65.0, "power_source": "configured",
            "kwh": hours * 0.0715, "tco2eq": hours * 0.0715 * 0.385 / 1000}


def _summary(stage: str, rng: random.Random, plots: int = 3, tables: int = 2) -> dict:
    return {"stage": stage, "effect": f"{stage}: 0.40 -> 0.55", "seconds": 60.0,
            "metrics": {f"m{i}": rng.random() for i in range(12)},
            "tables": [{"title": f"{stage} table {i}", "columns": ["a", "b", "c", "d"],
                        "rows": [[rng.random() for _ in range(4)] for _ in range(8)]} for i in range(tables)],
            "plots": [{"title": f"{stage} plot {i}", "kind": ["line", "hist", "bar"][i % 3], "xlabel": "x", "ylabel": "y",
                       "series": {f"s{j}": {"x": list(range(40)), "y": [rng.random() for _ in range(40)]}
                                  for j in range(3)}} for i in range(plots)]}


def synthetic_run(root: Path) -> Path:
    rng = random.Random(0)
    run = root / "demo"
    for i, stage in enumerate(["world", "tokenizer", "pretrain", "sft", "reward", "rlhf", "gatt", "distill", "eval",
                               "report"], 1):
        folder = run / f"{i:02d}-{stage}"
        folder.mkdir(parents=True)
        write_summary(folder, _summary(stage, rng))
        if stage in ("pretrain", "sft", "gatt", "distill"):
            _log(folder / "metrics.jsonl", 360 if stage == "pretrain" else 120, rng)
            write_json(folder / "manifest.json", {"stage": stage, "energy": _energy(0.05)})
        if stage == "reward":
            for kind in ("helpfulness", "safety", "helpfulness-no-margin"):
                _log(folder / kind / "metrics.jsonl", 50, rng)
                write_json(folder / kind / "manifest.json", {"stage": "reward", "energy": _energy(0.01)})
        if stage == "rlhf":
            for r in (1, 2):
                for kind in ("helpfulness", "safety", "helpfulness-no-margin"):
                    _log(folder / f"round-{r}" / "reward" / kind / "metrics.jsonl", 50, rng)
                write_summary(folder / f"round-{r}" / "rejection", _summary("rejection", rng, plots=1, tables=1))
                _log(folder / f"round-{r}" / "rejection" / "finetune" / "metrics.jsonl", 60, rng)
            write_summary(folder / "round-2" / "ppo", _summary("ppo", rng, plots=4, tables=1))
            _log(folder / "round-2" / "ppo" / "metrics.jsonl", 12, rng, extra=("kl", "rm_reward", "gold_reward"))
    (run / "01-world" / "world").mkdir()
    (run / "01-world" / "world" / "datacard.md").write_text("# Datacard\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an existing run folder to time instead of the synthetic one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else synthetic_run(Path(tmp))
        start = time.perf_counter()
        html_path, _ = build_report(run)
        seconds = time.perf_counter() - start
        text = html_path.read_text()
        print(json.dumps({"run": str(run) if args.run else "synthetic full-demo run", "seconds": round(seconds, 2),
                          "figures": text.count("<img"), "tables": text.count("<table"),
                          "html_kib": round(len(text) / 1024)}))


if __name__ == "__main__":
    main()
