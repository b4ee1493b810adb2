import math
import random

import pytest
import torch
import torch.nn.functional as F

from llamaforge.eval import (
    bootstrap_interval,
    evaluate,
    evaluate_multiple_choice,
    exact_match,
    perplexity,
    split_context_continuation,
)
from llamaforge.model import ModelArgs, Transformer
from llamaforge.tokenizer import train_tokenizer

COLORS = ["red", "blue", "green", "yellow"]
NAMES = ["Mira", "Tobe", "Kibu", "Lavir", "Sipe", "Gedea", "Nesoa", "Oakford"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(0)
    lines = [f"Question: Which color does {rng.choice(NAMES)} like? Answer: {rng.choice(COLORS)}" for _ in range(2000)]
    return train_tokenizer(iter(lines), tmp_path_factory.mktemp("tok") / "t.model", vocab_size=300)


def items():
    return [
        {"id": f"q{i}", "task_type": "multiple_choice", "context": f"Question: Which color does {name} like? Answer:",
         "choices": COLORS, "gold": i % 4, "answers": [COLORS[i % 4]]}
        for i, name in enumerate(NAMES)
    ]


def trained(tok, answer_shift: int) -> Transformer:
    """A tiny model taught each item's gold color (shift 0) or a wrong one (shift 1..3)."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64))
    texts = [f"{it['context']} {COLORS[(it['gold'] + answer_shift) % 4]}" for it in items()]
    seqs = [tok.encode(t, bos=True, eos=True) for t in texts]
    width = max(map(len, seqs))
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    targets = torch.full((len(seqs), width - 1), -100)
    for row, s in enumerate(seqs):
        batch[row, : len(s)] = torch.tensor(s)
        targets[row, : len(s) - 1] = torch.tensor(s[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def right_model(tok):
    return trained(tok, 0)


def test_correct_and_wrong_models_score_differently(tok, right_model):
    right = evaluate_multiple_choice(right_model, tok, items(), task="colors")
    wrong = evaluate_multiple_choice(trained(tok, 1), tok, items(), task="colors")
    assert right.metrics["acc"] == 1.0
    assert wrong.metrics["acc"] == 0.0
    assert right.n == 8 and len(right.per_item[0]["logliks"]) == 4
    low, high = right.intervals["acc"]
    assert low <= 1.0 <= high + 1e-9


def test_loglik_matches_transformers_scoring(tok, right_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    from llamaforge.checkpoint import load_model, save_model

    model = right_model
    save_model(model, tmp_path / "hf", format="hf")
    ours = load_model(tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    result = evaluate_multiple_choice(ours, tok, items(), task="colors", batch_size=3)
    for item, row in zip(items(), result.per_item):
        for choice, loglik in zip(item["choices"], row["logliks"]):
            ctx, cont = split_context_continuation(tok, item["context"], " " + choice)
            with torch.no_grad():
                logits = hf(torch.tensor([ctx + cont])).logits[0].float()
            logprobs = torch.log_softmax(logits, -1)
            expected = sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
            assert loglik == pytest.approx(expected, abs=1e-4)


def test_context_split_uses_token_boundaries(tok):
    ctx, cont = split_context_continuation(tok, "Question: Which color does Mira like? Answer:", " blue")
    assert ctx == tok.encode("Question: Which color does Mira like? Answer:", bos=True, eos=False)
    assert tok.decode(cont).strip() == "blue"


def test_generation_exact_match_and_judge(tok, right_model):
    model = right_model
    gen_items = [{**it, "task_type": "generate"} for it in items()]
    result = evaluate(model, tok, gen_items, task="colors-gen", max_new_tokens=10)
    assert result.metrics["score"] >= 0.75
    judged = evaluate(model, tok, gen_items, task="colors-gen", max_new_tokens=4, judge=lambda item, text: 0.0)
    assert judged.metrics["score"] == 0.0


def test_fewshot_changes_the_context(tok, right_model):
    model = right_model
    zero = evaluate_multiple_choice(model, tok, items(), task="c", fewshot=0)
    two = evaluate_multiple_choice(model, tok, items(), task="c", fewshot=2)
    assert zero.per_item[0]["logliks"] != two.per_item[0]["logliks"]


def test_exact_match_normalises():
    assert exact_match(" Blue.\nmore", ["blue"]) == 1.0
    assert exact_match("blue or red", ["blue"]) == 0.0
    assert exact_match("", ["blue"]) == 0.0


def test_perplexity_of_uniform_model_is_vocab_size(tok):
    model = Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64))
    with torch.no_grad():
        model.output.weight.zero_()  # uniform next-token distribution
    ppl = perplexity(model, tok, ["Question: Which color does Mira like? Answer: blue"] * 5, seq_len=32)
    assert ppl == pytest.approx(tok.vocab_size, rel=1e-4)


def test_bootstrap_interval_brackets_the_mean():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values)
    assert low < 0.3 < high and high - low < 0.25
    assert math.isnan(bootstrap_interval([])[0])
