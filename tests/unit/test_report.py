"""The report from fake stage folders: every section present, data routed to the right one,
missing stages said so, images embedded, numbers carried through, the carbon total summed."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from llamaforge import report
from llamaforge.report import SECTIONS, build_report, route

DATACARD_MD = """# World datacard (seed 0, size tiny)

## Pretraining corpus (SPEC §10 audit)

120 documents, 0.020 MB.

| category | documents | words | share of characters |
|---|---|---|---|
| encyclopedia | 80 | 2000 | 0.700 |
| toxic | 40 | 300 | 0.300 |
"""


def _energy(hours: float, watts: float = 65.0) -> dict:
    kwh = hours * watts / 1000 * 1.1
    return {"device": "cpu", "n_devices": 1, "device_hours": hours, "power_watts": watts, "power_source": "configured",
            "pue": 1.1, "intensity_kg_per_kwh": 0.385, "kwh": kwh, "tco2eq": kwh * 0.385 / 1000}


def _write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def _jsonl(path: Path, rows: list[dict]) -> None:
    _write(path, "\n".join(json.dumps(r) for r in rows) + "\n")


def make_fake_run(root: Path, *, with_distill: bool = False) -> Path:
    """A run folder as the demo leaves it, with made-up figures; distillation is not run."""
    run = root / "fake-run"
    pre = run / "01-pretrain"
    _write(pre / "manifest.json", {"stage": "pretrain", "status": "finished", "energy": _energy(0.1),
                                   "final": {"val_ppl": 2.5, "unigram_val_ppl": 180.0}})
    _jsonl(pre / "metrics.jsonl", [{"step": s, "loss": 6.0 / s} for s in range(1, 51)] + [{"step": 50, "val_loss": 0.15}])
    _write(pre / "world" / "datacard.md", DATACARD_MD)
    _write(pre / "world" / "datacard.json",
           {"corpus": {"categories": {"encyclopedia": {"character_share": 0.7}, "toxic": {"character_share": 0.3}}}})
    _write(pre / "summary.json", {"stage": "pretrain", "effect": "val perplexity 180.0 (unigram) -> 2.50", "seconds": 300.0,
                                  "metrics": {"val_ppl": 2.5}})

    sft = run / "02-sft"
    _write(sft / "manifest.json", {"stage": "sft", "energy": _energy(0.02)})
    _jsonl(sft / "metrics.jsonl", [{"step": s, "loss": 2.0 - s / 100} for s in range(1, 21)])
    _write(sft / "summary.json", {"stage": "sft", "effect": "helpfulness 0.05 -> 0.41", "seconds": 70.5,
                                  "metrics": {"helpfulness": 0.41, "parsed": 0.98}})

    reward = run / "03-reward"
    _write(reward / "summary.json", {
        "stage": "reward", "effect": "helpfulness RM accuracy 0.74 (margin) vs 0.71 (no margin)", "seconds": 80.0,
        "metrics": {"accuracy": 0.74},
        "tables": [{"title": "Accuracy by rating bucket", "columns": ["RM", "Significantly Better", "Better",
                                                                      "Slightly Better", "Negligibly Better / Unsure", "Avg"],
                    "rows": [["helpfulness, margin", 0.91, 0.8, 0.66, 0.55, 0.74],
                             ["helpfulness, no margin", 0.88, 0.77, 0.64, 0.56, 0.71]]}],
        "plots": [{"title": "Score histogram", "kind": "hist", "xlabel": "score", "ylabel": "pairs",
                   "series": {"chosen": {"x": [], "y": [0.1, 0.5, 0.7, 0.9, 1.2]}, "rejected": {"x": [], "y": [-1, -0.5, 0, 0.2]}}}],
    })

    rlhf = run / "04-rlhf"
    _jsonl(rlhf / "round-2" / "ppo" / "metrics.jsonl",
           [{"step": s, "rm_reward": 0.1 * s, "gold_reward": 0.05 * s, "kl": 0.01 * s, "loss": 1.0} for s in range(1, 11)])
    _write(rlhf / "round-2" / "ppo" / "manifest.json", {"stage": "ppo", "energy": _energy(0.01)})
    _write(rlhf / "summary.json", {
        "stage": "rlhf", "effect": "helpfulness 0.41 (SFT) -> 0.52 (V2), violation 0.30 -> 0.12", "seconds": 230.0,
        "tables": [{"title": "RLHF versions", "columns": ["version", "helpfulness", "violation", "false_refusal"],
                    "rows": [["SFT", 0.41, 0.30, 0.05], ["V1", 0.47, 0.2, 0.06], ["V2", 0.52, 0.12, 0.07]]}],
        "plots": [{"title": "Max vs median reward over K samples", "kind": "line", "xlabel": "K", "ylabel": "reward",
                   "series": {"max": {"x": [1, 2, 4, 8], "y": [0.3, 0.45, 0.55, 0.62]},
                              "median": {"x": [1, 2, 4, 8], "y": [0.3, 0.31, 0.3, 0.31]}}}],
    })

    # The loop's own stage folders: rejection sampling per round, PPO in the last, RMs retrained.
    _write(rlhf / "round-1" / "rejection" / "summary.json", {
        "stage": "rejection", "effect": "best of 4: gold 0.41 -> 0.49",
        "plots": [{"title": "Rejection sampling: reward of the best of K (paper Figure 7)", "kind": "line",
                   "series": {"max": {"x": [1, 2, 4], "y": [0.3, 0.4, 0.5]}}}]})
    _write(rlhf / "round-1" / "reward" / "summary.json", {
        "stage": "reward", "tables": [{"title": "Round 1 RM table", "columns": ["a"], "rows": [[1]]}]})
    _write(rlhf / "round-1" / "reward" / "helpfulness" / "summary.json", {
        "stage": "reward-helpfulness", "tables": [{"title": "Round 1 helpfulness RM", "columns": ["a"], "rows": [[1]]}]})
    _write(reward / "safety" / "summary.json", {
        "stage": "reward-safety", "plots": [{"title": "Inner safety RM plot", "series": {"a": {"x": [1], "y": [1]}}}]})
    gatt = run / "05-gatt"
    _write(gatt / "summary.json", {
        "stage": "gatt", "effect": "adherence turns 10-20: 0.31 -> 0.93", "seconds": 85.0,
        "plots": [{"title": "Instruction adherence vs turn", "kind": "line", "xlabel": "turn", "ylabel": "adherence",
                   "series": {"GAtt": {"x": list(range(1, 21)), "y": [0.95] * 20},
                              "no GAtt": {"x": list(range(1, 21)), "y": [0.9 - t / 30 for t in range(20)]}}}],
        "tables": [{"title": "A stage-specific table", "columns": ["a", "b"], "rows": [["x", 1.5]]}],
    })
    if with_distill:
        _write(run / "06-distill" / "summary.json", {"stage": "distill", "effect": "violation 0.2 -> 0.1", "seconds": 60})

    _write(run / "07-eval" / "summary.json", {
        "stage": "eval", "effect": "world knowledge 0.31 -> 0.77", "seconds": 40.0,
        "eval_table": {"academic": {"pretrained": {"world_knowledge": 0.771, "commonsense": 0.6, "reading": 0.5, "math": 0.3},
                                    "untrained": {"world_knowledge": 0.31}},
                       "safety": {"pretrained": {"truthfulqa": 0.2, "toxigen": 0.15},
                                  "final chat": {"truthfulqa": 0.55, "toxigen": 0.0}}},
    })
    _write(run / "pipeline.json", {"seconds": 900.0, "stages": [
        {"stage": s, "note": "stages.distill has no demo function yet" if s == "distill" else ""}
        for s in ("pretrain", "sft", "reward", "rlhf", "gatt", "distill", "eval")]})
    return run


def _sections(html_text: str) -> dict[str, str]:
    parts = re.findall(r'<section id="([^"]+)">(.*?)</section>', html_text, flags=re.S)
    return dict(parts)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("report"))
    html_path, md_path = build_report(run)
    return run, html_path.read_text(), md_path.read_text()


def test_every_section_is_present_in_html_and_markdown(built):
    run, html_text, md_text = built
    sections = _sections(html_text)
    assert list(sections)[: len(SECTIONS)] == list(SECTIONS)
    for sid, title in SECTIONS.items():
        assert f'<a id="{sid}"></a>' in md_text and f"## {title}" in md_text


def test_missing_stage_says_so_instead_of_vanishing(built):
    _, html_text, md_text = built
    sections = _sections(html_text)
    assert "stage not run" in sections["distillation"]
    assert "stage not run" not in sections["gatt-adherence"]
    # The summary table lists the stage that did not run, with the demo's reason.
    assert "stage not run: stages.distill has no demo function yet" in sections["summary"]
    assert "helpfulness 0.41 (SFT) -&gt; 0.52 (V2)" in sections["summary"]


def test_figures_and_tables_are_routed_to_their_sections(built):
    _, html_text, _ = built
    s = _sections(html_text)
    assert "Max vs median reward over K samples" in s["rejection-sampling"]  # from the rlhf stage, by title
    assert "Figure 11 layout" in s["rlhf-versions"] and "RLHF versions" in s["rlhf-versions"]
    assert "Accuracy by rating bucket" in s["rm-accuracy"] and "Negligibly Better / Unsure" in s["rm-accuracy"]
    assert "0.910" in s["rm-accuracy"]
    assert "Instruction adherence vs turn" in s["gatt-adherence"]
    # Nested stage folders of the loop reach their sections, unless a top-level stage of that kind exists.
    assert "reward of the best of K (paper Figure 7)" in s["rejection-sampling"]
    assert "<strong>rlhf/round-1/rejection</strong>: best of 4: gold 0.41 -&gt; 0.49" in s["rejection-sampling"]
    assert "Round 1 RM table" not in html_text and "Round 1 helpfulness RM" not in html_text
    assert "Inner safety RM plot" not in html_text  # a part of the reward stage, which summarises it
    assert not [sid for sid in s if sid.startswith("stage-")]
    assert "A stage-specific table" in s["gatt-adherence"]
    # The PPO log (a KL column) gives reward and KL curves, found under a nested folder.
    assert "round-2/ppo: KL per step" in s["ppo-curves"] and "round-2/ppo: reward per step" in s["ppo-curves"]
    assert "01-pretrain: loss" in s["loss-curves"] and "02-sft: loss" in s["loss-curves"]
    # One loss figure per stage folder: the loop's nested PPO log is a curve of 04-rlhf's figure.
    assert "04-rlhf: loss" in s["loss-curves"] and s["loss-curves"].count("<img") == 3
    assert "encyclopedia" in s["data-audit"]


def test_images_are_embedded_pngs(built):
    _, html_text, _ = built
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)
    # corpus bar, 3 loss curves, reward+KL, histogram, figure 11, max-vs-median, adherence
    assert len(images) >= 9
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<script" not in html_text and "http://" not in html_text and "https://" not in html_text


def test_markdown_twin_links_image_files_that_exist(built):
    run, _, md_text = built
    links = re.findall(r"!\[[^\]]*\]\((report_assets/[^)]+\.png)\)", md_text)
    assert len(links) >= 9
    assert all((run / link).read_bytes().startswith(b"\x89PNG") for link in links)


def test_eval_table_has_the_paper_layout_with_our_rows(built):
    _, html_text, _ = built
    s = _sections(html_text)["eval-table"]
    header = re.findall(r"<th>([^<]+)</th>", s)
    assert header[:9] == ["model", "Code", "Commonsense", "World Knowledge", "Reading", "Math", "MMLU", "BBH", "AGIEval"]
    # Our accuracy in percent under the paper's column, "—" where the world has no such suite.
    assert re.search(r"<td>pretrained</td><td>—</td><td>60.0</td><td>77.1</td><td>50.0</td><td>30.0</td><td>—</td>", s)
    assert "<td>Llama 2 70B (paper)</td><td>37.5</td>" in s
    assert re.search(r"<td>final chat</td><td>55.0</td><td>0.0</td>", s)
    assert "<td>Llama 2-Chat 7B (paper)</td><td>57.04</td><td>0.00</td>" in s


def test_energy_per_stage_and_pipeline_total(built):
    _, html_text, _ = built
    s = _sections(html_text)["energy-carbon"]
    for name in ("01-pretrain", "02-sft", "04-rlhf/round-2/ppo"):
        assert f"<td>{name}</td>" in s
    total_kg = (0.1 + 0.02 + 0.01) * 65 / 1000 * 1.1 * 0.385  # SPEC §12 formula, in kg
    row = re.search(r"<td>pipeline total</td><td></td><td>([0-9.]+)</td><td></td><td>([0-9.]+)</td><td>([0-9.]+)</td>", s)
    assert row is not None
    assert float(row.group(1)) == pytest.approx(0.13, abs=1e-4)
    assert float(row.group(3)) == pytest.approx(total_kg, abs=1e-5)
    # Stages that keep no energy record are named, with their time at the configured CPU power.
    unmetered_kg = (80.0 + 85.0 + 40.0) / 3600 * 65 / 1000 * 1.1 * 0.385
    note = re.search(r"Stages without an energy meter \(([^)]*)\) ran 205 s: about ([0-9.]+) kg", s)
    assert note is not None and note.group(1) == "reward, gatt, eval"
    assert float(note.group(2)) == pytest.approx(unmetered_kg, abs=1e-5)


def test_a_run_with_nothing_still_renders_every_section(tmp_path):
    html_path, _ = build_report(tmp_path)
    sections = _sections(html_path.read_text())
    assert set(SECTIONS) <= set(sections)
    for sid in SECTIONS:
        if sid != "eval-table":  # shows the paper's reference rows even with no run
            assert "stage not run" in sections[sid], sid


def test_unknown_stage_gets_its_own_section_and_half_written_files_are_tolerated(tmp_path):
    run = make_fake_run(tmp_path, with_distill=True)
    _write(run / "08-dpo" / "summary.json", {"stage": "dpo", "effect": "win rate 0.6",
                                             "tables": [{"title": "DPO table", "columns": ["k"], "rows": [[1]]}]})
    _write(run / "09-broken" / "summary.json", "{not json")
    with open(run / "02-sft" / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "loss"')  # a run still writing its log
    html_path, _ = build_report(run)
    sections = _sections(html_path.read_text())
    assert "DPO table" in sections["stage-dpo"]
    assert "stage not run" not in sections["distillation"]
    assert "violation 0.2 -&gt; 0.1" in sections["distillation"]


def test_route_prefers_explicit_section_then_title_then_stage():
    assert route({"title": "anything", "section": "ppo-curves"}, "sft") == "ppo-curves"
    assert route({"title": "Reward: max and median over K"}, "rejection") == "rejection-sampling"
    assert route({"title": "KL to the reference"}, "rlhf") == "ppo-curves"
    assert route({"title": "Weekly totals"}, "rlhf") == "rlhf-versions"  # "kl" inside a word does not count
    assert route({"title": "loss"}, "gatt") == "gatt-adherence"


def test_without_matplotlib_plots_become_install_hints(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "_matplotlib", lambda: None)
    html_path, _ = build_report(make_fake_run(tmp_path))
    text = html_path.read_text()
    assert "data:image/png" not in text
    assert "pip install &#x27;llamaforge[plots]&#x27;" in text
    assert "Accuracy by rating bucket" in text


def test_cli_writes_both_files_and_names_a_missing_folder(tmp_path, capsys):
    run = make_fake_run(tmp_path)
    assert report.main([str(run)]) == 0
    assert (run / "report.html").exists() and (run / "report.md").exists()
    assert report.main([str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_figure11_is_drawn_once_when_the_stage_draws_its_own(tmp_path):
    table = {"title": "RLHF versions", "columns": ["version", "helpfulness", "violation rate"],
             "rows": [["SFT", 0.4, 0.3], ["V2", 0.5, 0.1]]}
    own = {"title": "gold helpfulness vs harmlessness (paper Figure 11 layout)", "kind": "line",
           "series": {"path": {"x": [0.4, 0.5], "y": [0.7, 0.9]}}}
    _write(tmp_path / "own" / "01-rlhf" / "summary.json", {"stage": "rlhf", "tables": [table], "plots": [own]})
    _write(tmp_path / "table" / "01-rlhf" / "summary.json", {"stage": "rlhf", "tables": [table]})
    for name in ("own", "table"):
        html_path, _ = build_report(tmp_path / name)
        section = _sections(html_path.read_text())["rlhf-versions"]
        assert section.count("<img") == 1, name
