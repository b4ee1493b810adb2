"""SFT on a tiny model: the answer loss falls, the result loads and answers through the chat
format, an interrupted fine-tune resumes to the same weights, and bad input is explained."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llamaforge.checkpoint import load_model
from llamaforge.stages import sft as stage

from .test_reward import tiny  # noqa: F401  (the tiny world, tokenizer and model of the reward tests)


def _train(**overrides):
    base = dataclasses.replace(stage.demo_train(), lr=3e-3, warmup_steps=0, checkpoint_every=2, log_every=1,
                               schedule="constant", precision="fp32")
    return dataclasses.replace(base, **overrides)


def _losses(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def test_sft_lowers_the_answer_loss_and_loads(tiny, tmp_path):
    dialogs = tiny["world"].sft[:48]
    out = stage.finetune(tiny["lm"], dialogs, tmp_path / "sft", train=_train(), batch_size=8, epochs=3,
                         progress=False, eval_dialogs=tiny["world"].sft[48:64])
    losses = _losses(out)
    first, last = losses[min(losses)], losses[max(losses)]
    assert last < 0.8 * first, losses
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["data"]["dialogs"] == 48
    assert manifest["data"]["loss_tokens"] < manifest["data"]["tokens"]  # prompts carry no loss
    assert 0 < manifest["final"]["val_loss"] < first  # held-out dialogs improve too
    model = load_model(out)
    assert model.args == load_model(tiny["lm"]).args


def test_interrupted_sft_resumes_to_the_same_weights(tiny, tmp_path):
    dialogs = tiny["world"].sft[:32]
    kwargs = dict(batch_size=4, epochs=0, progress=False)
    stage.finetune(tiny["lm"], dialogs, tmp_path / "straight", train=_train(max_steps=6), **kwargs)
    stage.finetune(tiny["lm"], dialogs, tmp_path / "resumed", train=_train(max_steps=3), **kwargs)
    stage.finetune(tiny["lm"], dialogs, tmp_path / "resumed", train=_train(max_steps=6), **kwargs)
    straight, resumed = load_model(tmp_path / "straight"), load_model(tmp_path / "resumed")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_finetune_refuses_a_foreign_tokenizer(tiny, tmp_path):
    from llamaforge.tokenizer import train_tokenizer

    other = train_tokenizer(iter(["a b c d e f g h i j k l m n o p"] * 50), tmp_path / "other.model", 280)
    with pytest.raises(ValueError, match="vocabulary"):
        stage.finetune(tiny["lm"], tiny["world"].sft[:4], tmp_path / "x", tokenizer=other.model_path, progress=False)


def test_cli_explains_bad_files(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [ not json\n')
    assert stage.main([f"base={tiny['lm']}", f"data.dialogs={bad}", f"run.dir={tmp_path / 'r'}"]) == 1
    assert f"{bad}:2" in capsys.readouterr().err
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text(json.dumps({"messages": [{"role": "user", "content": "[INST] hi"},
                                               {"role": "assistant", "content": "yo"}]}) + "\n")
    assert stage.main([f"base={tiny['lm']}", f"data.dialogs={tagged}", f"run.dir={tmp_path / 'r2'}"]) == 1
    assert "[INST]" in capsys.readouterr().err
    assert stage.main([f"data.dialogs={tagged}"]) == 2
    assert "base= is required" in capsys.readouterr().err


def test_demo_stage_writes_a_summary_with_measured_effect(tiny, tmp_path):
    summary = stage.run_demo_sft(tiny["lm"], tiny["world"], tmp_path / "sft", epochs=1, eval_prompts=6, progress=False)
    written = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert written["effect"] == summary["effect"] and "gold helpfulness" in summary["effect"]
    metrics = summary["metrics"]
    assert 0 <= metrics["pretrained/helpfulness"] <= 1 and 0 <= metrics["sft/parsed"] <= 1
    assert metrics["helpfulness_gain_lo"] <= metrics["helpfulness_gain"] <= metrics["helpfulness_gain_hi"]
    assert summary["tables"][0]["rows"][0][0].startswith("pretrained")
    assert load_model(summary["outputs"]["model"]) is not None
