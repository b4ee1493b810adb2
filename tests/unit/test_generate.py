import pytest
import torch

from llamaforge.generate import Completion, SamplingParams, chat_sampling, generate, sample_next, stream_text
from llamaforge.model import ModelArgs, Transformer


class CharTokenizer:
    """ids 0..2 are <unk>/<s>/</s>; id 3+k is the character chr(97 + k % 26)."""

    eos_id = 2

    def decode(self, ids):
        return "".join(chr(97 + (i - 3) % 26) for i in ids if i >= 3)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_preset("tiny", vocab_size=64, max_seq_len=64)).eval()


def test_batched_prompts_of_different_lengths_equal_one_at_a_time(model):
    prompts = [[1, 5, 9, 12, 40, 33, 7], [1, 20], [1, 8, 8, 8, 60]]
    params = SamplingParams(max_new_tokens=12)
    batched = generate(model, prompts, params)
    single = [generate(model, [p], params)[0] for p in prompts]
    assert [c.tokens for c in batched] == [c.tokens for c in single]
    for b, s in zip(batched, single):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)


def test_greedy_follows_argmax_of_full_forward(model):
    prompt = [1, 4, 30, 17]
    out = generate(model, [prompt], SamplingParams(max_new_tokens=6))[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out.tokens == seq[len(prompt) :]
    assert out.finish_reason == "length"


def test_seed_makes_sampling_reproducible(model):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=123)
    a = generate(model, [[1, 2, 3]], params)[0].tokens
    b = generate(model, [[1, 2, 3]], params)[0].tokens
    c = generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=10, temperature=1.0, seed=124))[0].tokens
    assert a == b and a != c


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    gen = torch.Generator().manual_seed(0)
    top_k = sample_next(logits, SamplingParams(temperature=1.0, top_k=2), gen)
    assert set(top_k.tolist()) == {0, 1}
    # probs ~ [.72, .26, .013, ...]: nucleus 0.9 keeps the first two only
    top_p = sample_next(logits, SamplingParams(temperature=1.0, top_p=0.9), gen)
    assert set(top_p.tolist()) == {0, 1}
    assert set(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.5), gen).tolist()) == {0}


def test_eos_and_stop_tokens_end_generation(model):
    params = SamplingParams(max_new_tokens=20)
    free = generate(model, [[1, 7]], params)[0].tokens
    stop_at = free[3]
    out = generate(model, [[1, 7]], SamplingParams(max_new_tokens=20, stop_tokens=[stop_at]))[0]
    assert out.finish_reason == "stop" and out.tokens == free[: free.index(stop_at)]
    out = generate(model, [[1, 7]], params, eos_id=stop_at)[0]
    assert out.tokens == free[: free.index(stop_at)]


def test_stop_strings_cut_text(model):
    tok = CharTokenizer()
    free = generate(model, [[1, 7]], SamplingParams(max_new_tokens=12), eos_id=-1)[0]
    text = tok.decode(free.tokens)
    stop = text[4:6]
    out = generate(model, [[1, 7]], SamplingParams(max_new_tokens=12, stop_strings=[stop]), tokenizer=tok)[0]
    assert out.text == text[: text.find(stop)] and out.finish_reason == "stop"
    streamed = "".join(stream_text(model, tok, [1, 7], SamplingParams(max_new_tokens=12, stop_strings=[stop])))
    assert streamed == out.text


def test_stream_text_equals_generate(model):
    tok = CharTokenizer()
    params = SamplingParams(max_new_tokens=15)
    pieces = list(stream_text(model, tok, [1, 3, 9], params))
    assert len(pieces) > 1
    assert "".join(pieces) == generate(model, [[1, 3, 9]], params, tokenizer=tok)[0].text


def test_context_caps_generation(model):
    out = generate(model, [[1] * 60], SamplingParams(max_new_tokens=50))[0]
    assert len(out.tokens) <= 4
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 64], SamplingParams(max_new_tokens=5))


def test_chat_sampling_defaults():
    params = chat_sampling(4096)
    assert (params.temperature, params.top_p, params.max_new_tokens) == (0.6, 0.9, 4095)


def test_bad_params_are_explained():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    assert isinstance(Completion([], "length"), Completion)


def test_chat_replies_match_one_at_a_time_and_keep_order(tmp_path):
    from llamaforge.chat_format import encode_dialog, parse_reply
    from llamaforge.generate import chat_replies
    from llamaforge.tokenizer import train_tokenizer

    lines = [f"the {w} sat on the mat and said hello {i}" for i, w in enumerate(["cat", "dog", "owl", "fox"] * 30)]
    tok = train_tokenizer(iter(lines), tmp_path / "tok.model", 300)
    torch.manual_seed(0)
    chat_model = Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=96)).eval()
    dialogs = [
        [{"role": "user", "content": "hello"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat on the mat, why"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ]
    params = SamplingParams(max_new_tokens=10)
    batched = chat_replies(chat_model, tok, dialogs, params, batch_size=2)
    for dialog, got in zip(dialogs, batched):
        alone = generate(chat_model, [encode_dialog(tok, dialog)], params, tokenizer=tok)[0]
        assert got.tokens == alone.tokens and got.text == parse_reply(tok, alone.tokens)
    too_long = [{"role": "user", "content": "hello " * 200}]
    with pytest.raises(ValueError, match="context"):
        chat_replies(chat_model, tok, [too_long], params)


def test_chat_replies_end_where_the_model_writes_chat_markup():
    from llamaforge.generate import _cut_at_chat_tag

    assert _cut_at_chat_tag("Nunwick. [INST] and now me") == "Nunwick."
    assert _cut_at_chat_tag("ok <</SYS>> [/INST] x") == "ok"
    assert _cut_at_chat_tag("plain answer") == "plain answer"


def test_decode_layout_is_taken_after_the_prefill_and_only_when_decoding_repays_it(model, monkeypatch):
    import contextlib

    from llamaforge import generate as gen

    events = []
    real_step = gen.last_logits

    def counted_step(*args, **kwargs):
        events.append("step")
        return real_step(*args, **kwargs)

    @contextlib.contextmanager
    def recorded_layout(m):
        events.append("layout")
        yield

    monkeypatch.setattr(gen, "last_logits", counted_step)
    monkeypatch.setattr(gen, "decode_layout", recorded_layout)
    generate(model, [[1, 5, 9]], SamplingParams(max_new_tokens=1))
    assert events == ["step"]  # a prefill alone: no weight copies
    events.clear()
    generate(model, [[1, 5, 9]], SamplingParams(max_new_tokens=gen.DECODE_LAYOUT_MIN_STEPS))
    assert "layout" not in events  # too few decode steps to repay two copies of the weights
    events.clear()
    n = gen.DECODE_LAYOUT_MIN_STEPS + 1
    out = generate(model, [[1, 5, 9]], SamplingParams(max_new_tokens=n, stop_tokens=[]), eos_id=-1)[0]
    assert len(out.tokens) == n and events == ["step", "layout"] + ["step"] * (n - 1)


def test_compiled_decoding_gives_the_eager_tokens_in_whole_graphs(model):
    """torch.compile of the decode step: the eager tokens, for a left-padded batch too, and no
    graph break (each would hand every layer's ops back to Python; a CPU-only thread query and a
    tensor.is_inference() check once broke every Linear and the rotary table)."""
    from torch._dynamo.utils import counters

    prompts = [[1, 5, 9, 12, 40, 33, 7], [1, 20]]
    params = SamplingParams(max_new_tokens=10)
    eager = [c.tokens for c in generate(model, prompts, params)]
    torch._dynamo.reset()
    counters.clear()
    compiled = [c.tokens for c in generate(model, prompts, params, compile=True)]
    assert compiled == eager
    # One graph: the decode step's. The prefill runs eagerly (one call: nothing to repay a compile).
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_the_rotary_table_is_never_an_inference_tensor(model):
    """generate builds it under inference_mode; training (compiled, with activation checkpointing)
    saves it for backward, which an inference tensor refuses."""
    generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=2))
    assert not model._rope.is_inference()  # as cached: a compiled step takes it as it is
    assert not model.rope_table(torch.device("cpu")).is_inference()
