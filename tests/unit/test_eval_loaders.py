"""Local benchmark layouts (MMLU CSV/JSONL, BoolQ, HellaSwag, TruthfulQA MC) read from files the
tests write, scored by the harness, and reached through `llamaforge eval --local`."""

from __future__ import annotations

import json

import pytest

from llamaforge.eval import evaluate
from llamaforge.eval.loaders import BenchmarkFormatError, load_benchmark


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mmlu_csv_release_layout(tmp_path):
    folder = tmp_path / "data" / "test"
    folder.mkdir(parents=True)
    (folder / "high_school_physics_test.csv").write_text(
        'What is the unit of force?,joule,"newton, N",watt,pascal,B\nWhat is 2+2?,3,4,5,6,B\n')
    (folder / "anatomy_test.csv").write_text("Where is the heart?,chest,foot,hand,ear,A\n")
    items = load_benchmark("mmlu", tmp_path / "data")
    assert [it["subject"] for it in items] == ["anatomy", "high school physics", "high school physics"]
    physics = items[1]
    assert physics["choices"] == ["A", "B", "C", "D"] and physics["gold"] == 1
    assert physics["context"] == ("The following are multiple choice questions (with answers) about high school physics."
                                  "\n\nWhat is the unit of force?\nA. joule\nB. newton, N\nC. watt\nD. pascal\nAnswer:")
    assert len({it["id"] for it in items}) == 3


def test_mmlu_hub_jsonl_and_errors(tmp_path):
    path = _jsonl(tmp_path / "mmlu.jsonl", [{"question": "q?", "subject": "virology", "choices": ["a", "b", "c", "d"],
                                              "answer": 3}])
    (item,) = load_benchmark("mmlu", path)
    assert item["gold"] == 3 and "about virology" in item["context"]
    bad = tmp_path / "bad" / "x_test.csv"
    bad.parent.mkdir()
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(BenchmarkFormatError, match=r"x_test.csv:1: answer should be A-D"):
        load_benchmark("mmlu", bad.parent)


def test_boolq_both_layouts(tmp_path):
    google = _jsonl(tmp_path / "g" / "dev.jsonl", [{"question": "is the sky blue", "passage": "The sky is blue.",
                                                    "answer": True}])
    superglue = _jsonl(tmp_path / "s" / "val.jsonl", [{"question": "is grass red", "passage": "Grass is green.", "label": 0}])
    (g,) = load_benchmark("boolq", google)
    (s,) = load_benchmark("boolq", superglue)
    assert g["gold"] == 1 and s["gold"] == 0 and g["choices"] == ["no", "yes"]
    assert g["context"] == "The sky is blue.\nQuestion: Is the sky blue?\nAnswer:"
    with pytest.raises(BenchmarkFormatError, match="'answer'"):
        load_benchmark("boolq", _jsonl(tmp_path / "b.jsonl", [{"question": "q", "passage": "p"}]))


def test_hellaswag_layout(tmp_path):
    path = _jsonl(tmp_path / "hellaswag_val.jsonl", [{
        "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour.", "ctx_b": "she",
        "endings": ["puts the tray in the oven [title] Step 2.", "flies away.", "eats the car.", "sings."], "label": 0}])
    (item,) = load_benchmark("hellaswag", path)
    assert item["context"] == "Baking cookies: A woman mixes flour. She"
    assert item["choices"][0] == "puts the tray in the oven. Step 2." and item["gold"] == 0
    with pytest.raises(BenchmarkFormatError, match="label"):
        load_benchmark("hellaswag", _jsonl(tmp_path / "h2.jsonl", [{"ctx": "x", "endings": ["a"], "label": 3}]))


def test_truthfulqa_mc_original_and_hub_layouts(tmp_path):
    original = tmp_path / "mc_task.json"
    original.write_text(json.dumps([{"question": "Are bats blind?",
                                     "mc1_targets": {"Yes, bats are blind.": 0, "No, bats can see.": 1}}]))
    hub = _jsonl(tmp_path / "hub" / "mc.jsonl", [{"question": "Q?", "mc1_targets": {"choices": ["x", "y", "z"],
                                                                                   "labels": [0, 0, 1]}}])
    (a,) = load_benchmark("truthfulqa_mc", original)
    (b,) = load_benchmark("truthfulqa_mc", hub)
    assert a["gold"] == 1 and a["context"] == "Q: Are bats blind?\nA:" and b["gold"] == 2
    with pytest.raises(ValueError, match="unknown benchmark 'arc'"):
        load_benchmark("arc", original)


def test_loaded_items_score_a_right_and_a_wrong_model_differently(tmp_path):
    """A model that only knows "yes" (its output layer favours the piece) is right on every
    true question of BoolQ and wrong on every false one."""
    import torch

    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import train_tokenizer

    rows = [{"question": f"is {i} a number", "passage": f"{i} is a number.", "answer": True} for i in range(6)]
    items = load_benchmark("boolq", _jsonl(tmp_path / "boolq.jsonl", rows))
    tok = train_tokenizer(iter([it["context"] + " yes no maybe" for it in items] * 40), tmp_path / "tok.model", 300)
    torch.manual_seed(0)
    base = Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256)).eval()
    yes, no = tok.encode(" yes", bos=False, eos=False), tok.encode(" no", bos=False, eos=False)

    class FavoursYes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base, self.args, self.output = base, base.args, base.output

        def forward(self, tokens):
            logits = self.base(tokens).clone()
            logits[..., sorted(set(yes) - set(no))] += 30.0
            return logits

    model = FavoursYes()
    says_yes = evaluate(model, tok, items, task="boolq").metrics["acc"]
    flipped = [{**it, "gold": 1 - it["gold"]} for it in items]
    says_yes_on_flipped = evaluate(model, tok, flipped, task="boolq").metrics["acc"]
    assert set(yes) - set(no)
    assert evaluate(base, tok, items, task="boolq").n == 6
    assert says_yes == 1.0 and says_yes_on_flipped == 0.0


def test_cli_local_benchmark(tmp_path, capsys):
    import torch

    from llamaforge.checkpoint import save_model
    from llamaforge.eval.cli import main
    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import train_tokenizer

    rows = [{"question": f"is {i} even", "passage": f"{i} is a number.", "label": i % 2} for i in range(5)]
    path = _jsonl(tmp_path / "boolq.jsonl", rows)
    tok = train_tokenizer(iter([f"{i} is a number. is it even yes no" for i in range(200)]), tmp_path / "tok.model", 300)
    torch.manual_seed(0)
    save_model(Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=128)), tmp_path / "m",
               format="meta")
    out = tmp_path / "r.json"
    assert main([str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok.model"), "--local", f"boolq={path}",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["boolq"]["n"] == 5
    assert main([str(tmp_path / "m"), "--tokenizer", str(tmp_path / "tok.model"), "--local", "mmlu=/nope"]) == 1
    assert "does not exist" in capsys.readouterr().err
