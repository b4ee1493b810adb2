"""`llamaforge demo --quick`: the whole current pipeline end to end, as CI runs it."""

import json

from llamaforge.cli import main


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert main(["demo", "--quick", "--root", str(tmp_path), "--eval-limit", "24"]) == 0
    run = tmp_path / "demo-quick"
    report = (run / "report.md").read_text()
    assert "## Summary: each stage's measured effect" in report
    summary = json.loads((run / "report.json").read_text())
    final = summary["pretrain"]
    # Pretraining must have learned something real about the world.
    assert final["val_ppl"] < final["unigram_val_ppl"] / 4
    assert set(summary["evals"]["suites"]) >= {"world_knowledge", "reading", "commonsense"}
    assert "report:" in capsys.readouterr().out

    checkpoints = sorted(p.name for p in (run / "01-pretrain" / "checkpoints").iterdir())
    # A second run resumes the finished stage: no new checkpoint, same figures.
    assert main(["demo", "--quick", "--root", str(tmp_path), "--eval-limit", "24"]) == 0
    assert sorted(p.name for p in (run / "01-pretrain" / "checkpoints").iterdir()) == checkpoints
    again = json.loads((run / "report.json").read_text())
    assert again["pretrain"]["val_ppl"] == final["val_ppl"]
