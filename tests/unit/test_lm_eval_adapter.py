"""The lm-evaluation-harness adapter gives the same numbers as llamaforge's own harness
(skipped when lm-eval is not installed; it is an optional extra)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from llamaforge.checkpoint import save_model  # noqa: E402
from llamaforge.eval.harness import perplexity  # noqa: E402
from llamaforge.eval.lm_eval_adapter import LlamaforgeLM  # noqa: E402
from llamaforge.model import ModelArgs, Transformer  # noqa: E402
from llamaforge.tokenizer import train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    train_tokenizer(iter([f"the cat {i} sat on the mat and the dog ran" for i in range(300)]), folder / "tok.model", 300)
    torch.manual_seed(0)
    from llamaforge.tokenizer import Tokenizer

    vocab = Tokenizer(folder / "tok.model").vocab_size
    save_model(Transformer(ModelArgs.from_preset("tiny", vocab_size=vocab, max_seq_len=16)), folder / "m", format="meta")
    return LlamaforgeLM(str(folder / "m"), tokenizer=str(folder / "tok.model"), batch_size="auto")


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_matches_a_manual_sum(lm):
    (logprob, greedy), = lm.loglikelihood(_requests("loglikelihood", [("the cat", " sat on")]))
    tokens = lm.tok.encode("the cat sat on", bos=True, eos=False)
    context = len(lm.tok.encode("the cat", bos=True, eos=False))
    with torch.no_grad():
        logits = torch.log_softmax(lm.model(torch.tensor([tokens[:-1]])).float(), -1)[0]
    expected = sum(float(logits[i - 1, tokens[i]]) for i in range(context, len(tokens)))
    assert logprob == pytest.approx(expected, abs=1e-4) and isinstance(greedy, bool)


def test_rolling_loglikelihood_predicts_every_token_once(lm):
    text = " ".join(["the cat sat on the mat"] * 6)  # longer than the 16-token context
    (total,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    n_predicted = len(lm.tok.encode(text, bos=True, eos=False)) - 1
    assert n_predicted > 16 and total < 0
    # Perplexity over the same tokens with non-overlapping windows: same sum when each window
    # sees the tokens before it only within itself, so compare the order of magnitude only.
    assert math.exp(-total / n_predicted) == pytest.approx(perplexity(lm.model, lm.tok, [text]), rel=0.5)


def test_generate_until_is_greedy_and_cuts_at_the_stop_string(lm):
    from llamaforge.generate import SamplingParams, generate

    (free,) = lm.generate_until(_requests("generate_until", [("the cat", {"until": [], "max_gen_toks": 8})]))
    (expected,) = generate(lm.model, [lm.tok.encode("the cat", bos=True, eos=False)], SamplingParams(max_new_tokens=8),
                           tokenizer=lm.tok)
    assert free == expected.text and free
    stop = free[len(free) // 2 :][:2]
    (cut,) = lm.generate_until(_requests("generate_until", [("the cat", {"until": [stop], "max_gen_toks": 8})]))
    assert cut == free.split(stop)[0]
