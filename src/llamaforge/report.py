"""`llamaforge report RUN_DIR`: one self-contained HTML page and its Markdown twin from a run folder.

The report reads what the stages leave behind and nothing else:

- `NN-<stage>/summary.json` — `{"stage", "effect", "seconds", "metrics", "tables", "plots"}` (the
  format every stage writes; `write_summary` writes one atomically);
- every `metrics.jsonl` under the run (trainer logs: loss curves; PPO's reward and KL);
- every `manifest.json` under the run (energy of each stage, SPEC §12);
- the world's `datacard.json`/`datacard.md` (the pretraining-data audit, SPEC §10);
- `pipeline.json` written by `llamaforge demo` (the stage list, including stages not run).

Each section has a stable id (`SECTIONS`). A section with no data says why ("stage not run")
instead of vanishing. A stage's `plots` and `tables` render generically: an item goes to the
section it names (`"section": "<id>"`), else to the one its title points at (a title with
"median" goes to rejection sampling, "KL" to PPO, ...), else to its stage's own section, so a
stage adds a figure without any change here. Plots are PNGs drawn with matplotlib (the `plots`
extra) and embedded as base64; without matplotlib the tables still render and each plot says
how to install it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Section id -> heading. The ids are stable: tests and links depend on them.
SECTIONS: dict[str, str] = {
    "summary": "Summary: each stage's measured effect",
    "data-audit": "Data audit of the pretraining corpus (SPEC §10)",
    "loss-curves": "Loss curves",
    "sft": "Supervised fine-tuning (SPEC §6)",
    "rm-accuracy": "Reward models: accuracy by rating, margin vs no margin (SPEC §7)",
    "rejection-sampling": "Rejection sampling: max vs median reward over K samples (SPEC §8)",
    "ppo-curves": "PPO: reward and KL (SPEC §8)",
    "rlhf-versions": "Helpfulness vs safety per RLHF version (Figure 11 layout)",
    "gatt-adherence": "Ghost Attention: adherence vs turn (SPEC §9)",
    "distillation": "Safety context distillation (SPEC §10)",
    "eval-table": "Evaluation (SPEC §11 layout)",
    "energy-carbon": "Energy and carbon (SPEC §12)",
}

# The section that holds a stage's own figures, and the stage that feeds each section.
STAGE_SECTIONS = {
    "sft": "sft", "reward": "rm-accuracy", "rejection": "rejection-sampling", "ppo": "ppo-curves",
    "rlhf": "rlhf-versions", "gatt": "gatt-adherence", "distill": "distillation", "eval": "eval-table",
}
# Title words that route a figure or table to a section (checked in this order).
TITLE_ROUTES = (
    (("median", "best-of", "max vs", "max-vs"), "rejection-sampling"),
    (("figure 11", "harmlessness", "helpfulness vs safety", "helpfulness vs. safety"), "rlhf-versions"),
    (("kl", "ppo"), "ppo-curves"),
    (("rating", "margin"), "rm-accuracy"),
    (("adherence", "gatt"), "gatt-adherence"),
)

# SPEC §11 (Table 3): pretrained Llama 2 category averages, and the safety evaluations.
ACADEMIC_COLUMNS = ("Code", "Commonsense", "World Knowledge", "Reading", "Math", "MMLU", "BBH", "AGIEval")
PAPER_ACADEMIC = {
    "Llama 2 7B (paper)": (16.8, 63.9, 48.9, 61.3, 14.6, 45.3, 32.6, 29.3),
    "Llama 2 13B (paper)": (24.5, 66.9, 55.4, 65.8, 28.7, 54.8, 39.4, 39.1),
    "Llama 2 34B (paper)": (27.8, 69.9, 58.7, 68.0, 24.2, 62.6, 44.1, 43.4),
    "Llama 2 70B (paper)": (37.5, 71.9, 63.6, 69.4, 35.2, 68.9, 51.2, 54.2),
}
SAFETY_COLUMNS = ("TruthfulQA (% true and informative, higher is better)", "ToxiGen (% toxic, lower is better)")
PAPER_SAFETY = {  # SPEC §11
    "Llama 2 7B (paper)": (33.29, 21.25), "Llama 2 13B (paper)": (41.86, 26.10),
    "Llama 2 34B (paper)": (43.45, 21.19), "Llama 2 70B (paper)": (50.18, 24.60),
    "Llama 2-Chat 7B (paper)": (57.04, 0.00), "Llama 2-Chat 13B (paper)": (62.18, 0.00),
    "Llama 2-Chat 34B (paper)": (67.20, 0.02), "Llama 2-Chat 70B (paper)": (64.14, 0.01),
}
# Our world's suites under the paper's column names.
WORLD_SUITE_COLUMNS = {"commonsense": "Commonsense", "world_knowledge": "World Knowledge", "reading": "Reading",
                       "math": "Math", "mmlu": "MMLU"}

PLOTS_HINT = "matplotlib is not installed, so plots are left out: pip install 'llamaforge[plots]'"
MAX_POINTS = 400  # points per curve drawn (long logs are thinned evenly)


# --------------------------------------------------------------------------- reading a run


@dataclass
class Block:
    """One piece of a section: a paragraph, a table, a note or an image (PNG bytes)."""

    kind: str  # "p" | "note" | "table" | "image"
    text: str = ""
    columns: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    png: bytes | None = None


@dataclass
class Stage:
    name: str
    path: Path
    summary: dict
    label: str = ""  # how tables name it; nested stages show their path (rlhf/round-2/ppo)


def write_summary(folder: str | os.PathLike, summary: dict) -> Path:
    """Write `folder/summary.json` atomically (temp file + rename), as every stage should."""
    return write_json(Path(folder) / "summary.json", summary)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None when it is missing, half-written or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL log; a torn last line (a run still writing) is skipped."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def discover_stages(run_dir: Path) -> list[Stage]:
    """Stage folders `NN-<stage>` in order, with their summary (or one made from the manifest)."""
    stages = []
    for path in sorted(p for p in Path(run_dir).glob("[0-9][0-9]-*") if p.is_dir()):
        name = path.name[3:]
        summary = read_json(path / "summary.json")
        if summary is None:
            manifest = read_json(path / "manifest.json") or {}
            final = manifest.get("final") or {}
            summary = {"stage": name, "effect": "", "metrics": {k: v for k, v in final.items() if _is_number(v)},
                       "status": manifest.get("status", "no summary.json yet")}
        stages.append(Stage(name=summary.get("stage") or name, path=path, summary=summary))
    return stages


def discover_nested(run_dir: Path, stages: list[Stage]) -> list[Stage]:
    """Summaries inside stage folders (the RLHF loop's round-N/rejection, round-N/ppo, ...) of
    stages that have no folder of their own in the run, so their figures still reach the report."""
    top = {s.name for s in stages}
    nested = []
    for stage in stages:
        for path in sorted(stage.path.rglob("summary.json")):
            if path.parent == stage.path:
                continue
            summary = read_json(path)
            # "reward-helpfulness" is a part of a reward stage: its kind is the part before - or /.
            kind = re.split(r"[-/]", str((summary or {}).get("stage") or path.parent.name))[0]
            if summary is not None and kind not in top:
                label = str(path.parent.relative_to(run_dir)).replace(stage.path.name, stage.name, 1)
                nested.append(Stage(name=kind, path=path.parent, summary=summary, label=label))
    return nested


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- plots


def _matplotlib():
    """matplotlib's Figure class (drawn with the Agg canvas, no pyplot state), or None."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _thin(xs: list, ys: list) -> tuple[list, list]:
    if len(xs) <= MAX_POINTS:
        return xs, ys
    step = len(xs) / MAX_POINTS
    keep = sorted({int(i * step) for i in range(MAX_POINTS)} | {len(xs) - 1})
    return [xs[i] for i in keep], [ys[i] for i in keep]


def render_plot(plot: dict) -> bytes | None:
    """A summary.json plot as PNG bytes (None without matplotlib).

    `kind` "line" draws each series' y over x, "bar" groups the series' y by their x labels,
    "hist" histograms each series' values (`values`, else `y`), "scatter" marks each series'
    points and labels them with `labels` when given.
    """
    figure_class = _matplotlib()
    if figure_class is None:
        return None
    kind = plot.get("kind", "line")
    series = plot.get("series") or {}
    fig = figure_class(figsize=(6.4, 3.6), dpi=80)
    # Fixed margins instead of tight_layout: that costs a second full draw of every figure.
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.2 if kind == "bar" else 0.14)
    ax = fig.add_subplot()
    if kind == "bar":
        categories: list = []
        for s in series.values():
            categories += [str(x) for x in s.get("x", []) if str(x) not in categories]
        width = 0.8 / max(1, len(series))
        for i, (label, s) in enumerate(series.items()):
            values = dict(zip(map(str, s.get("x", [])), s.get("y", [])))
            positions = [c + i * width - 0.4 + width / 2 for c in range(len(categories))]
            ax.bar(positions, [_float(values.get(c)) for c in categories], width, label=label)
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0, fontsize=8)
    elif kind == "hist":
        for label, s in series.items():
            values = [v for v in (s.get("values") or s.get("y") or s.get("x") or []) if _is_number(v)]
            ax.hist(values, bins=min(30, max(5, len(values) // 5 or 5)), alpha=0.6, label=label)
    else:
        for label, s in series.items():
            xs, ys = s.get("x") or list(range(len(s.get("y", [])))), s.get("y", [])
            points = [(x, _float(y)) for x, y in zip(xs, ys)]
            xs, ys = _thin([p[0] for p in points], [p[1] for p in points])
            if kind == "scatter":
                ax.plot(xs, ys, marker="o", linestyle="-" if s.get("connect", True) else "", label=label)
                for x, y, text in zip(xs, ys, s.get("labels") or []):
                    ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            else:
                ax.plot(xs, ys, marker="o" if len(xs) <= 25 else None, markersize=3, label=label)
    ax.set_title(plot.get("title", ""), fontsize=10)
    ax.set_xlabel(plot.get("xlabel", ""))
    ax.set_ylabel(plot.get("ylabel", ""))
    if plot.get("logy"):
        ax.set_yscale("log")
    if len(series) > 1 or kind == "scatter":
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _float(value: Any) -> float:
    return float(value) if _is_number(value) else float("nan")


# --------------------------------------------------------------------------- sections


class Report:
    """Sections in `SECTIONS` order, filled by the builders below."""

    def __init__(self) -> None:
        self.sections: dict[str, list[Block]] = {sid: [] for sid in SECTIONS}
        self.titles = dict(SECTIONS)

    def add(self, section: str, block: Block) -> None:
        if section not in self.sections:
            self.sections[section] = []
            self.titles.setdefault(section, section.replace("-", " ").capitalize())
        self.sections[section].append(block)

    def plot(self, section: str, plot: dict) -> None:
        png = render_plot(plot)
        if png is None:
            self.add(section, Block("note", f"{plot.get('title', 'plot')}: {PLOTS_HINT}"))
        else:
            self.add(section, Block("image", plot.get("title", ""), png=png))

    def table(self, section: str, title: str, columns: list, rows: list) -> None:
        self.add(section, Block("table", title, columns=list(columns), rows=[list(r) for r in rows]))


def route(item: dict, stage: str) -> str:
    """The section a stage's plot or table belongs to (see the module doc)."""
    if item.get("section"):
        return str(item["section"])
    title = f" {item.get('title', '').lower()} "
    for words, section in TITLE_ROUTES:
        if any(re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", title) for w in words):
            return section
    return STAGE_SECTIONS.get(stage, f"stage-{stage}")


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def summary_section(report: Report, stages: list[Stage], pipeline: dict | None) -> None:
    by_name = {s.name: s for s in stages}
    order = [entry["stage"] for entry in (pipeline or {}).get("stages", [])]
    order += [s.name for s in stages if s.name not in order]
    notes = {entry["stage"]: entry.get("note", "") for entry in (pipeline or {}).get("stages", [])}
    rows = []
    for name in order:
        stage = by_name.get(name)
        if stage is None:
            rows.append([name, f"stage not run{': ' + notes[name] if notes.get(name) else ''}", ""])
            continue
        seconds = stage.summary.get("seconds")
        effect = stage.summary.get("effect") or stage.summary.get("status") or "no effect recorded"
        rows.append([name, effect, f"{seconds:.0f} s" if _is_number(seconds) else ""])
    if not rows:
        report.add("summary", Block("note", "stage not run: no stage folders (NN-<stage>) in this run"))
        return
    report.table("summary", "", ["stage", "measured effect", "time"], rows)
    if pipeline and _is_number(pipeline.get("seconds")):
        report.add("summary", Block("p", f"Pipeline wall time (all invocations): {pipeline['seconds']:.0f} s."))


def audit_section(report: Report, run_dir: Path) -> None:
    cards = sorted(run_dir.rglob("datacard.md"))
    if not cards:
        report.add("data-audit", Block("note", "stage not run: no world datacard (datacard.md) in this run"))
        return
    for block in markdown_blocks(cards[0].read_text()):
        report.add("data-audit", block)
    card = read_json(cards[0].with_suffix(".json")) or {}
    categories = (card.get("corpus") or {}).get("categories") or {}
    if categories:
        report.plot("data-audit", {"title": "Pretraining corpus: share of characters by category", "kind": "bar",
                                    "xlabel": "category", "ylabel": "share of characters",
                                    "series": {"corpus": {"x": list(categories),
                                                          "y": [c.get("character_share") for c in categories.values()]}}})


def markdown_blocks(text: str) -> list[Block]:
    """Headings, paragraphs and pipe tables of a Markdown text (enough for a datacard)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    table.append(cells)
                i += 1
            blocks.append(Block("table", columns=table[0], rows=table[1:]))
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            if lines[i].startswith("## ") or lines[i].startswith("### "):
                blocks.append(Block("p", f"**{heading}**"))
        elif line:
            blocks.append(Block("p", line))
        i += 1
    return blocks


def curve_sections(report: Report, run_dir: Path, *, ppo_curves: bool = True) -> None:
    """Loss curves of every trainer log, one figure per stage folder (its nested runs, e.g. the
    loop's reward models, as more curves); PPO-style logs (with a KL column) also go to PPO
    unless `ppo_curves` is off (the PPO stage drew its own)."""
    figures: dict[str, dict] = {}
    for log in sorted(run_dir.rglob("metrics.jsonl")):
        rows = read_jsonl(log)
        name = str(log.parent.relative_to(run_dir))
        top, _, inner = name.partition("/") if name != "." else ("run", "", "")
        for key in ("loss", "val_loss"):
            kept = [r for r in rows if _is_number(r.get(key)) and _is_number(r.get("step"))]
            if kept:
                label = f"{inner}: {key}" if inner else key
                figures.setdefault(top, {})[label] = {"x": [r["step"] for r in kept], "y": [r[key] for r in kept]}
        kl_keys = sorted({k for r in rows for k in r if re.search(r"(^|_|/)kl($|_|/)", k) and _is_number(r[k])})
        if kl_keys and ppo_curves:
            reward_keys = sorted({k for r in rows for k in r if "reward" in k and _is_number(r[k])})
            for keys, label in ((reward_keys, "reward"), (kl_keys, "KL")):
                curves = {k: {"x": [r.get("step", i) for i, r in enumerate(rows) if _is_number(r.get(k))],
                              "y": [r[k] for r in rows if _is_number(r.get(k))]} for k in keys}
                if curves:
                    report.plot("ppo-curves", {"title": f"{name}: {label} per step", "kind": "line", "xlabel": "step",
                                               "ylabel": label, "series": curves})
    for top, series in figures.items():
        report.plot("loss-curves", {"title": f"{top}: loss", "kind": "line", "xlabel": "step", "ylabel": "loss",
                                    "series": series})
    if not figures:
        report.add("loss-curves", Block("note", "stage not run: no trainer metrics.jsonl with a loss in this run"))


def stage_items(report: Report, stages: list[Stage]) -> None:
    """Every stage's tables and plots, routed to their sections."""
    for stage in stages:
        summary, label = stage.summary, stage.label or stage.name
        plots = summary.get("plots") or []
        draws_figure11 = any(route(plot, stage.name) == "rlhf-versions" for plot in plots)
        for table in summary.get("tables") or []:
            section = route(table, stage.name)
            report.table(section, f"{label}: {table.get('title', '')}", table.get("columns") or [],
                         [[fmt(c) for c in row] for row in table.get("rows") or []])
            if section == "rlhf-versions" and not draws_figure11:
                figure11(report, table)
        for plot in plots:
            report.plot(route(plot, stage.name), plot)
        if stage.name in STAGE_SECTIONS and STAGE_SECTIONS[stage.name] != "eval-table":
            metrics = {k: v for k, v in (summary.get("metrics") or {}).items() if _is_number(v)}
            if summary.get("effect"):
                report.add(STAGE_SECTIONS[stage.name], Block("p", f"**{label}**: {summary['effect']}"))
            if metrics and not stage.label:
                report.table(STAGE_SECTIONS[stage.name], f"{stage.name}: metrics", ["metric", "value"],
                             [[k, fmt(v)] for k, v in metrics.items()])


def figure11(report: Report, table: dict) -> None:
    """A V1..Vn table with helpfulness and violation (or safety) columns as the paper's Figure 11:
    harmlessness on x, helpfulness on y, one labelled point per version."""
    columns = [str(c).lower() for c in table.get("columns") or []]
    helpful = next((i for i, c in enumerate(columns) if "helpful" in c and "interval" not in c), None)
    safety = next((i for i, c in enumerate(columns) if ("violation" in c or "safety" in c or "harmless" in c)
                   and "interval" not in c), None)
    rows = table.get("rows") or []
    if helpful is None or safety is None or not rows:
        return
    xs, ys, labels = [], [], []
    for row in rows:
        if not (_is_number(row[helpful]) and _is_number(row[safety])):
            continue
        x = row[safety]
        xs.append(1 - x if "violation" in columns[safety] else x)
        ys.append(row[helpful])
        labels.append(str(row[0]))
    if xs:
        report.plot("rlhf-versions", {"title": "Figure 11 layout: helpfulness vs harmlessness per version",
                                      "kind": "scatter", "xlabel": "harmlessness (1 - violation rate)",
                                      "ylabel": "helpfulness", "series": {"versions": {"x": xs, "y": ys, "labels": labels}}})


def eval_section(report: Report, stages: list[Stage]) -> None:
    """SPEC §11 layout: academic category averages and the safety columns, ours beside the paper's.

    Reads the eval stage's `summary["eval_table"]`: `{"academic": {model: {suite: acc in [0, 1]}},
    "safety": {model: {"truthfulqa": share true and informative, "toxigen": share toxic}}}`.
    """
    eval_stage = next((s for s in reversed(stages) if s.name == "eval"), None)
    table = (eval_stage.summary.get("eval_table") if eval_stage else None) or {}
    if not table:
        report.add("eval-table", Block("note", "stage not run: no eval stage summary with an eval_table; "
                                               "the paper's figures are shown for reference"))
    academic_rows = []
    for model, scores in (table.get("academic") or {}).items():
        by_column = {WORLD_SUITE_COLUMNS.get(k, k): v for k, v in scores.items()}
        academic_rows.append([model] + [_percent(by_column.get(c)) for c in ACADEMIC_COLUMNS])
    academic_rows += [[name] + [f"{v:.1f}" for v in values] for name, values in PAPER_ACADEMIC.items()]
    report.table("eval-table", "Academic benchmarks, accuracy % (our world's suites under the paper's categories; "
                 "— = no such suite in the built-in world)", ["model", *ACADEMIC_COLUMNS], academic_rows)
    safety_rows = [[model, _percent(s.get("truthfulqa")), _percent(s.get("toxigen"))]
                   for model, s in (table.get("safety") or {}).items()]
    safety_rows += [[name, f"{a:.2f}", f"{b:.2f}"] for name, (a, b) in PAPER_SAFETY.items()]
    report.table("eval-table", "Safety evaluations", ["model", *SAFETY_COLUMNS], safety_rows)


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if _is_number(value) else "—"


def energy_section(report: Report, run_dir: Path, stages: list[Stage]) -> None:
    from .carbon import DEFAULT_WATTS, manifest_energy, sum_energy, tco2eq

    rows = manifest_energy([run_dir], missing_ok=True)
    if not rows:
        report.add("energy-carbon", Block("note", "stage not run: no manifest.json with an energy section in this run"))
        return
    total = sum_energy(rows)
    metered = {Path(r["manifest"]).relative_to(run_dir).parts[0] for r in rows}
    unmetered = [s for s in stages if s.path.name not in metered and _is_number(s.summary.get("seconds"))]
    report.table("energy-carbon", "Per stage: tCO2eq = device-hours × kW × PUE × kg/kWh / 1000",
                 ["run", "device", "device-hours", "power (W)", "kWh (facility)", "kg CO2eq"],
                 [[str(Path(r["manifest"]).parent.relative_to(run_dir)), r["device"], f"{r['device_hours']:.4f}",
                   f"{r['power_watts']:.0f} ({r['power_source']})", f"{r['kwh']:.4f}", f"{r['tco2eq'] * 1000:.5f}"]
                  for r in rows]
                 + [["pipeline total", "", f"{total['device_hours']:.4f}", "", f"{total['kwh']:.4f}",
                     f"{total['tco2eq'] * 1000:.5f}"]])
    if unmetered:
        seconds = sum(s.summary["seconds"] for s in unmetered)
        kg = tco2eq(seconds / 3600, DEFAULT_WATTS["cpu"]) * 1000
        report.add("energy-carbon", Block("p", f"Stages without an energy meter ({', '.join(s.name for s in unmetered)}) "
                                               f"ran {seconds:.0f} s: about {kg:.5f} kg CO2eq more at "
                                               f"{DEFAULT_WATTS['cpu']:.0f} W (one CPU device), not in the total above."))
    report.add("energy-carbon", Block("p", "PUE 1.1 and 0.385 kg CO2eq/kWh unless a run configured others (SPEC §12). "
                                           "For scale, the paper's pretraining of four models emitted 539 tCO2eq."))


def collect(run_dir: Path) -> Report:
    run_dir = Path(run_dir)
    report = Report()
    stages = discover_stages(run_dir)
    pipeline = read_json(run_dir / "pipeline.json")
    nested = discover_nested(run_dir, stages)
    summary_section(report, stages, pipeline)
    audit_section(report, run_dir)
    stage_items(report, stages + nested)
    curve_sections(report, run_dir, ppo_curves=not any(b.kind == "image" for b in report.sections["ppo-curves"]))
    eval_section(report, stages)
    energy_section(report, run_dir, stages)
    ran = {s.name for s in stages + nested}
    for stage, section in STAGE_SECTIONS.items():
        if not report.sections[section]:
            report.add(section, Block("note", f"stage not run: no {stage} stage in this run"
                                              if stage not in ran else f"the {stage} stage recorded no figures"))
    return report


# --------------------------------------------------------------------------- writing


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}caption{text-align:left;font-weight:600;padding:.3em 0}.note{color:#8a5a00;font-style:italic}
img{max-width:100%;display:block;margin:.6em 0}nav a{margin-right:.8em;font-size:.85em}
"""


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def to_html(report: Report, title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", "<nav>"]
    parts += [f'<a href="#{sid}">{html.escape(report.titles[sid])}</a>' for sid in report.sections]
    parts.append("</nav>")
    for sid, blocks in report.sections.items():
        parts.append(f'<section id="{sid}"><h2>{html.escape(report.titles[sid])}</h2>')
        for block in blocks:
            if block.kind == "p":
                parts.append(f"<p>{_inline(block.text)}</p>")
            elif block.kind == "note":
                parts.append(f'<p class="note">{_inline(block.text)}</p>')
            elif block.kind == "image":
                data = base64.b64encode(block.png).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(block.text)}" src="data:image/png;base64,{data}"></figure>')
            elif block.kind == "table":
                caption = f"<caption>{_inline(block.text)}</caption>" if block.text else ""
                head = "".join(f"<th>{_inline(str(c))}</th>" for c in block.columns)
                body = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
                parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(report: Report, title: str, assets: Path) -> str:
    """The Markdown twin; its images are PNG files in `assets` (next to the .md)."""
    lines = [f"# {title}", ""]
    counter = 0
    for sid, blocks in report.sections.items():
        lines += [f'<a id="{sid}"></a>', f"## {report.titles[sid]}", ""]
        for block in blocks:
            if block.kind == "p":
                lines += [block.text, ""]
            elif block.kind == "note":
                lines += [f"*{block.text}*", ""]
            elif block.kind == "image":
                counter += 1
                assets.mkdir(parents=True, exist_ok=True)
                name = f"{counter:02d}-{re.sub(r'[^a-z0-9]+', '-', block.text.lower()).strip('-')[:60] or 'plot'}.png"
                (assets / name).write_bytes(block.png)
                lines += [f"![{block.text}]({assets.name}/{name})", ""]
            elif block.kind == "table":
                if block.text:
                    lines += [f"**{block.text}**", ""]
                cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines.append("| " + " | ".join(cell(c) for c in block.columns) + " |")
                lines.append("|" + "---|" * len(block.columns))
                lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
    return "\n".join(lines)


def build_report(run_dir: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Write `report.html` (self-contained) and `report.md` (+ `report_assets/`) into the run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist; pass a folder like runs/demo")
    title = title or f"llamaforge report: {run_dir.name}"
    report = collect(run_dir)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    for path, text in ((html_path, to_html(report, title)), (md_path, to_markdown(report, title, run_dir / "report_assets"))):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return html_path, md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llamaforge report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding NN-<stage>/ folders (e.g. runs/demo)")
    p.add_argument("--title", default=None, help="page title (default: the run folder's name)")
    args = p.parse_args(argv)
    start = time.time()
    try:
        html_path, md_path = build_report(args.run_dir, args.title)
    except FileNotFoundError as e:
        print(f"llamaforge report: {e}", file=sys.stderr)
        return 1
    print(f"report: {html_path} (and {md_path}) in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
