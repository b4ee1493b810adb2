"""Safety evaluations: the scoring of known replies with the gold judges and with plugged-in
scorers, and one real (tiny, random) model through the whole path including the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from llamaforge.eval import safety
from llamaforge.eval.harness import TaskResult
from llamaforge.world import World


@pytest.fixture(scope="module")
def world():
    return World.generate(seed=0, size="tiny")


def _replying(monkeypatch, reply):
    """Make the model answer `reply(item)` to every item (generation itself is the harness's, tested there)."""
    asked = {}

    def fake_generation(model, tok, items, **kwargs):
        asked.update(kwargs)
        return TaskResult(task=kwargs["task"], n=len(items), metrics={},
                          per_item=[{"id": it.get("id"), "response": reply(it), "score": 0.0} for it in items])

    monkeypatch.setattr(safety, "evaluate_generation", fake_generation)
    return asked


def test_truthfulqa_true_and_informative_with_gold_judge(monkeypatch, world):
    items = world.evals["truthfulqa"][:10]
    _replying(monkeypatch, lambda it: it["answer"])
    truth = safety.truthfulqa_eval(None, None, items)["metrics"]
    assert truth == {"truthfulqa/true": 1.0, "truthfulqa/informative": 1.0, "truthfulqa/true_and_informative": 1.0}
    _replying(monkeypatch, lambda it: it["myth"])
    myth = safety.truthfulqa_eval(None, None, items)["metrics"]
    assert myth["truthfulqa/true"] == 0.0 and myth["truthfulqa/true_and_informative"] == 0.0
    _replying(monkeypatch, lambda it: "I have no comment.")
    silent = safety.truthfulqa_eval(None, None, items)["metrics"]
    assert silent["truthfulqa/true"] == 1.0 and silent["truthfulqa/informative"] == 0.0  # true but uninformative
    # Half truth, half myth: the share is exactly one half, the interval around it.
    _replying(monkeypatch, lambda it: it["answer"] if int(it["id"][-1]) % 2 == 0 else it["myth"])
    half = safety.truthfulqa_eval(None, None, items)
    assert half["metrics"]["truthfulqa/true_and_informative"] == 0.5
    lo, hi = half["intervals"]["truthfulqa/true_and_informative"]
    assert lo < 0.5 < hi


def test_toxigen_share_of_toxic_continuations_and_plugged_scorer(monkeypatch, world):
    items = world.evals["toxigen"][:12]
    _replying(monkeypatch, lambda it: " They are so lazy and dirty.")
    toxic = safety.toxigen_eval(None, None, items)["metrics"]
    assert toxic["toxigen/toxic"] == 1.0 and toxic["toxigen/toxicity"] > 0.5
    _replying(monkeypatch, lambda it: " They are kind neighbours.")
    assert safety.toxigen_eval(None, None, items)["metrics"]["toxigen/toxic"] == 0.0
    # Any scorer plugs in; the threshold decides what counts as toxic; labels split the share.
    _replying(monkeypatch, lambda it: "x" * (10 if it["label"] == "toxic" else 2))
    result = safety.toxigen_eval(None, None, items, toxicity=lambda text: len(text) / 10, threshold=0.5)["metrics"]
    n_toxic = sum(it["label"] == "toxic" for it in items)
    assert result["toxigen/toxic"] == pytest.approx(n_toxic / len(items))
    assert result["toxigen/toxic/toxic"] == 1.0 and result["toxigen/toxic/benign"] == 0.0


def test_chat_models_are_prompted_through_the_chat_format(monkeypatch, world):
    asked = _replying(monkeypatch, lambda it: it["answer"])
    safety.truthfulqa_eval(None, None, world.evals["truthfulqa"][:2], chat=False)
    assert asked["prompt_fn"] is None
    safety.truthfulqa_eval(None, None, world.evals["truthfulqa"][:2], chat=True)
    assert asked["prompt_fn"] is not None


def test_real_tiny_model_and_cli(tmp_path, world, capsys):
    from llamaforge.checkpoint import save_model
    from llamaforge.eval.cli import main
    from llamaforge.model import ModelArgs, Transformer
    from llamaforge.tokenizer import train_tokenizer

    tok = train_tokenizer(world.pretraining_documents(), tmp_path / "tokenizer.model", 400)
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256)).eval()
    result = safety.safety_eval(model, tok, {k: world.evals[k] for k in ("truthfulqa", "toxigen")}, chat=True,
                                prompts=world.prompt_records(split="eval"), limit=6)
    for name in ("truthfulqa/true_and_informative", "toxigen/toxic", "violation", "false_refusal"):
        assert 0.0 <= result["metrics"][name] <= 1.0 and result["n"][name] == 6, name
    save_model(model, tmp_path / "model", format="meta")
    out = tmp_path / "safety.json"
    assert main([str(tmp_path / "model"), "--tokenizer", str(tmp_path / "tokenizer.model"), "--task", "safety",
                 "--limit", "4", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["n"]["toxigen/toxic"] == 4 and "truthfulqa/true" in saved["metrics"]
    assert "violation" not in saved["metrics"]  # a base model is not asked the chat prompts
    assert "toxigen/toxic" in capsys.readouterr().out
