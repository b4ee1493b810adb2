"""`llamaforge demo`: the stage framework (order, skip until a stage's code lands, resume after an
interruption) on fake stages, and `--quick` end to end as CI runs it."""

import json
import re

import pytest

from llamaforge import demo
from llamaforge.cli import main
from llamaforge.demo import Stage, StageStopped, run_pipeline
from llamaforge.report import SECTIONS


def _fake_stages(calls: list[str], fail_at: str | None = None):
    def make(name):
        def run(ctx):
            calls.append(name)
            if name == fail_at:
                raise KeyboardInterrupt
            before = ctx.model() if ctx.outputs else None
            return {"effect": f"{name} done", "outputs": {"model": str(ctx.dir / "model")}, "before": str(before)}
        return run

    return [Stage("one", 1, make("one")), Stage("two", 1, make("two")),
            Stage("later", 1, make("later"), requires=("llamaforge.stages.not_written_yet:run",)),
            Stage("half", 1, make("half"), requires=("llamaforge.demo:run_pipeline", "llamaforge.demo:no_such_function")),
            Stage("three", 1, make("three"))]


def test_pipeline_skips_unlanded_stages_and_resumes_after_an_interruption(tmp_path):
    calls: list[str] = []
    lines: list[str] = []
    with pytest.raises(StageStopped) as stopped:
        run_pipeline(tmp_path, _fake_stages(calls, fail_at="three"), out=lines.append)
    assert stopped.value.code == 130
    assert calls == ["one", "two", "three"]
    assert (tmp_path / "01-one" / "summary.json").exists() and not (tmp_path / "05-three" / "summary.json").exists()
    assert any(re.match(r"\[3/5\] later +skipped: llamaforge.stages.not_written_yet does not import", x) for x in lines)
    assert any(re.match(r"\[4/5\] half +skipped: llamaforge.demo.no_such_function has not landed", x) for x in lines)
    assert any(re.match(r"\[2/5\] two +running — elapsed \d+:\d\d, ETA \d+:\d\d", x) for x in lines)

    calls.clear()
    record = run_pipeline(tmp_path, _fake_stages(calls), out=lines.append)
    assert calls == ["three"]  # finished stages are not redone
    summary = json.loads((tmp_path / "05-three" / "summary.json").read_text())
    assert summary["stage"] == "three" and summary["seconds"] >= 0
    # A later stage sees the newest model of the earlier ones, restored from their summaries.
    assert summary["before"] == str(tmp_path / "02-two" / "model")
    assert [e["status"] for e in record["stages"]] == ["done", "done", "skipped", "skipped", "done"]
    table = demo.summary_table(record)
    assert "one done" in table and "stage not run: llamaforge.stages.not_written_yet" in table


def test_a_failing_stage_is_recorded_the_others_still_run_and_a_rerun_retries_it(tmp_path, capsys):
    attempts = []

    def flaky(ctx):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("out of disk")
        return {"effect": "worked the second time"}

    calls: list[str] = []
    stages = [*_fake_stages(calls)[:2], Stage("flaky", 1, flaky), Stage("after", 1, lambda ctx: {"effect": "ran"})]
    lines: list[str] = []
    record = run_pipeline(tmp_path, stages, out=lines.append)
    assert record["failed"] == ["flaky"] and [e["status"] for e in record["stages"]] == ["done", "done", "failed", "done"]
    assert any(re.match(r"\[3/4\] flaky +failed after \d+ s: RuntimeError: out of disk", x) for x in lines)
    assert "out of disk" in demo.summary_table(record)
    assert "RuntimeError: out of disk" in capsys.readouterr().err  # the traceback, for whoever fixes it
    again = run_pipeline(tmp_path, stages, out=lines.append)
    assert "failed" not in again and len(attempts) == 2 and calls == ["one", "two"]


def test_pipeline_stages_are_in_the_paper_order():
    assert [s.name for s in demo.STAGES] == ["world", "tokenizer", "pretrain", "sft", "reward", "rlhf", "distill",
                                             "gatt", "eval", "report"]


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert main(["demo", "--quick", "--root", str(tmp_path), "--eval-limit", "24"]) == 0
    run = tmp_path / "demo-quick"
    out = capsys.readouterr().out
    assert f"report: {run / 'report.html'}" in out
    pipeline = json.loads((run / "pipeline.json").read_text())
    stages = {e["stage"]: e for e in pipeline["stages"]}
    assert set(stages) == {s.name for s in demo.STAGES}
    # Every stage either ran with a measured effect or says why it did not.
    for entry in pipeline["stages"]:
        assert entry["effect"] if entry["status"] == "done" else entry["note"], entry
    pretrain = json.loads((run / "03-pretrain" / "summary.json").read_text())["metrics"]
    assert pretrain["val_ppl"] < pretrain["unigram_val_ppl"] / 4  # learned something real about the world
    evals = json.loads((run / "09-eval" / "summary.json").read_text())
    assert {"world_knowledge", "reading"} <= set(evals["eval_table"]["academic"]["pretrained"])
    html = (run / "report.html").read_text()
    assert all(f'<section id="{sid}">' in html for sid in SECTIONS)

    checkpoints = sorted(p.name for p in (run / "03-pretrain" / "checkpoints").iterdir())
    (run / "09-eval" / "summary.json").unlink()  # as if interrupted during evaluation
    assert main(["demo", "--quick", "--root", str(tmp_path), "--eval-limit", "24"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[3/10\] pretrain +done earlier", out) and re.search(r"\[9/10\] eval +running", out)
    assert sorted(p.name for p in (run / "03-pretrain" / "checkpoints").iterdir()) == checkpoints
    again = json.loads((run / "09-eval" / "summary.json").read_text())
    assert again["metrics"] == evals["metrics"]  # same models, same items: same figures


def test_eval_stage_scores_a_chat_model_beside_the_pretrained_one(tmp_path):
    """The eval stage's chat path (safety prompts through the chat format) on a stand-in chat
    model: a copy of a tiny pretrained checkpoint."""
    import shutil

    import torch

    from llamaforge.checkpoint import save_model
    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import train_tokenizer
    from llamaforge.world import World, write_world

    world = World.generate(seed=0, size="tiny")
    write_world(world, tmp_path / "world")
    tok = train_tokenizer(world.pretraining_documents(), tmp_path / "tokenizer.model", 400)
    torch.manual_seed(0)
    save_model(Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256)),
               tmp_path / "pretrained", format="meta")
    shutil.copytree(tmp_path / "pretrained", tmp_path / "chat")
    ctx = demo.Context(root=tmp_path, eval_limit=6, stage="eval", dirs={"eval": tmp_path / "09-eval"},
                       outputs={"world": {"world": str(tmp_path / "world")},
                                "tokenizer": {"tokenizer": str(tmp_path / "tokenizer.model")},
                                "pretrain": {"model": str(tmp_path / "pretrained")},
                                "sft": {"model": str(tmp_path / "chat")}})
    summary = demo._eval_stage(ctx)
    assert set(summary["eval_table"]["academic"]) == {"untrained", "pretrained", "final chat"}
    assert set(summary["eval_table"]["safety"]) == {"pretrained", "final chat"}
    # Same weights: the same multiple-choice scores; the chat model alone is asked the safety prompts.
    assert summary["eval_table"]["academic"]["final chat"] == summary["eval_table"]["academic"]["pretrained"]
    assert "final chat/violation" in summary["metrics"] and "pretrained/violation" not in summary["metrics"]
    chat_table = summary["tables"][1]
    assert chat_table["rows"][0][0] == "final chat" and "violation" in summary["effect"]

    # A later chat model beside the SFT one: the model-based comparison, here of equal weights.
    shutil.copytree(tmp_path / "pretrained", tmp_path / "rlhf")
    ctx.outputs["rlhf"] = {"model": str(tmp_path / "rlhf")}
    summary = demo._eval_stage(ctx)
    table = summary["tables"][-1]
    assert table["title"].startswith("Model-based evaluation") and table["rows"][0][:4] == ["gold reward", 0.0, 1.0, 0.0]
    assert "final vs SFT by the gold judge: win 0%, tie 100%, loss 0%" in summary["effect"]
