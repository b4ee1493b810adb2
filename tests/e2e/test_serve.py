"""The server end to end: continuous batching is exact, the OpenAI client works, hostile input
gets 4xx JSON errors, and limits (queue, timeout, disconnects, load) hold. 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from llamaforge.chat_format import encode_dialog, parse_reply  # noqa: E402
from llamaforge.checkpoint import save_model  # noqa: E402
from llamaforge.generate import SamplingParams, generate  # noqa: E402
from llamaforge.model import ModelArgs, Transformer  # noqa: E402
from llamaforge.serve import Engine, QueueFull, create_app  # noqa: E402
from llamaforge.serve.cli import main as serve_main  # noqa: E402
from llamaforge.serve.cli import serve_in_background  # noqa: E402
from llamaforge.serve.engine import TextStream  # noqa: E402
from llamaforge.tokenizer import train_tokenizer  # noqa: E402

WORDS = "the cat dog sat ran on a mat big small red blue house tree and then".split()
MODEL = "tiny"


def build_tokenizer(path):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {rng.randint(0, 999)}." for _ in range(3000)]
    return train_tokenizer(iter(lines), path, vocab_size=320)


def build_model(tok, max_seq_len: int = 128, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs.from_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len)).eval()


def slowed(model: Transformer, seconds: float) -> Transformer:
    """A copy whose every forward call takes at least `seconds`, so requests stay in flight."""
    slow = copy.deepcopy(model)
    slow.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    return slow


def random_text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("serve") / "tokenizer.model")


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok)


@pytest.fixture(scope="module")
def url(model, tok):
    app = create_app(copy.deepcopy(model), tok, model_name=MODEL, max_batch=4, max_queue=32, timeout=60)
    with serve_in_background(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


class Collector:
    """Engine events per request, gathered from the engine thread."""

    def __init__(self):
        self.events = defaultdict(list)
        self.lock = threading.Lock()

    def callback(self, key):
        def on_event(event):
            with self.lock:
                self.events[key].append(event)
        return on_event

    def done(self, key, count: int = 1) -> bool:
        with self.lock:
            return sum(e.finish_reason is not None for e in self.events[key]) == count

    def tokens(self, key) -> int:
        with self.lock:
            return max((e.n_tokens for e in self.events[key]), default=0)

    def result(self, key, index: int = 0):
        events = [e for e in self.events[key] if e.index == index]
        return "".join(e.text for e in events), events[-1].finish_reason, events[-1].n_tokens


# --------------------------------------------------------------------------- the engine


def test_engine_greedy_equals_generate_with_requests_joining_mid_flight(tok, model):
    """The correctness test of batching: rows joining, leaving and being compacted (a 64-token
    serving context fills up) give exactly the tokens of `generate` on each prompt alone."""
    rng = random.Random(1)
    prompts = [tok.encode(random_text(rng, 1, 25), bos=True) for _ in range(10)]
    max_new = [rng.randint(3, 64 - len(p)) for p in prompts]
    reference = [generate(copy.deepcopy(model), [p], SamplingParams(max_new_tokens=m), tokenizer=tok)[0]
                 for p, m in zip(prompts, max_new)]
    engine = Engine(copy.deepcopy(model), tok, max_batch=3, max_queue=16, context=64).start()
    got = Collector()
    try:
        for i, (prompt, m) in enumerate(zip(prompts, max_new)):
            engine.submit([prompt], SamplingParams(max_new_tokens=m), got.callback(i))
            if i % 3 == 2:  # let the batch run a few steps before the next ones join
                wait_until(lambda i=i: got.tokens(i) >= 2 or got.done(i), what=f"request {i} to start")
        wait_until(lambda: all(got.done(i) for i in range(len(prompts))), what="all requests")
    finally:
        engine.stop()
    for i, ref in enumerate(reference):
        assert got.result(i) == (ref.text, ref.finish_reason, len(ref.tokens)), f"prompt {i}"
    assert engine.stats.compactions > 0, "the test should make the clock reach the cache end"
    assert engine.stats.steps < sum(len(r.tokens) for r in reference), "requests should have shared steps"


def test_engine_serves_an_int8_model_as_generate_does(tok, model):
    from llamaforge.quantize import quantize_int8

    rng = random.Random(2)
    prompts = [tok.encode(random_text(rng, 1, 20), bos=True) for _ in range(4)]
    quantised = quantize_int8(copy.deepcopy(model))
    reference = [generate(copy.deepcopy(quantised), [p], SamplingParams(max_new_tokens=12), tokenizer=tok)[0]
                 for p in prompts]
    engine = Engine(copy.deepcopy(quantised), tok, max_batch=4, max_queue=8, context=64).start()
    got = Collector()
    try:
        for i, prompt in enumerate(prompts):
            engine.submit([prompt], SamplingParams(max_new_tokens=12), got.callback(i))
        wait_until(lambda: all(got.done(i) for i in range(len(prompts))), what="all requests")
    finally:
        engine.stop()
    for i, ref in enumerate(reference):
        assert got.result(i) == (ref.text, ref.finish_reason, len(ref.tokens)), f"prompt {i}"


def test_engine_seeded_sampling_does_not_depend_on_the_batch(tok, model):
    prompt = tok.encode("the big dog", bos=True)
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    engine = Engine(copy.deepcopy(model), tok, max_batch=4).start()
    got = Collector()
    try:
        engine.submit([prompt], params, got.callback("alone"))
        wait_until(lambda: got.done("alone"))
        others = SamplingParams(max_new_tokens=30, temperature=1.0)
        engine.submit([tok.encode("a red house and", bos=True)], others, got.callback("other"))
        engine.submit([prompt], params, got.callback("batched"), n=2)
        wait_until(lambda: got.done("batched", 2) and got.done("other"))
    finally:
        engine.stop()
    assert got.result("batched", 0) == got.result("alone")
    assert got.result("batched", 1) != got.result("alone"), "choice 1 samples with seed + 1"


def test_engine_queue_is_bounded(tok, model):
    engine = Engine(model, tok, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    params = SamplingParams(max_new_tokens=4)
    for _ in range(3):  # one for the free row, two that wait
        engine.submit([[tok.bos_id]], params, lambda event: None)
    with pytest.raises(QueueFull):
        engine.submit([[tok.bos_id]], params, lambda event: None)
    assert engine.queue_depth == 3 and engine.stats.rejected == 1
    with pytest.raises(ValueError, match="prompt needs"):
        engine.submit([list(range(3, 3 + model.args.max_seq_len))], params, lambda event: None)


def test_text_stream_releases_only_final_text(tok):
    ids = tok.encode("the cat sat on the mat and then ran", bos=False)
    stream = TextStream(tok, ["on the"], prefix=tok.encode("big", bos=False))
    pieces, hit = [], False
    for token in ids:
        piece, hit = stream.push(token)
        pieces.append(piece)
        if hit:
            break
    assert hit and "".join(pieces) == " the cat sat "
    reply = TextStream(tok, strip=True)
    pieces = [reply.push(t)[0] for t in tok.encode("  hello there  ", bos=False)] + [reply.flush()]
    assert "".join(pieces) == "hello there" and not pieces[-2].endswith(" ")


@pytest.mark.parametrize("seed", range(6))
def test_text_stream_pieces_add_up_to_decoding_everything_at_once(tok, seed):
    """Random ids (mostly byte pieces: broken UTF-8 everywhere) and real multi-byte text; the
    incremental decoder, which stops re-decoding settled tokens, must release exactly the text."""
    rng = random.Random(seed)
    if seed < 3:
        ids = [rng.randrange(3, tok.vocab_size) for _ in range(400)]
    else:
        ids = tok.encode(" ".join(rng.choice(WORDS + ["café", "naïve", "日本語", "—", "🙂"]) for _ in range(150)))
    prefix = tok.encode("the house", bos=False)[-1:] if seed % 2 else []
    stream = TextStream(tok, prefix=prefix)
    released = "".join(stream.push(t)[0] for t in ids) + stream.flush()
    assert released == (tok.decode(prefix + ids)[len(tok.decode(prefix)) :] if prefix else tok.decode(ids))
    assert stream.settled > 0, "long outputs should settle"


# --------------------------------------------------------------------------- the OpenAI client


def test_openai_client_chat_matches_reference_generation(client, model, tok):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "the cat sat on"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    prompt = encode_dialog(tok, messages)
    ref = generate(copy.deepcopy(model), [prompt], SamplingParams(max_new_tokens=24), tokenizer=tok)[0]
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == parse_reply(tok, ref.tokens)
    assert choice.finish_reason == ref.finish_reason
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == len(ref.tokens)
    assert reply.usage.total_tokens == len(prompt) + len(ref.tokens)
    assert reply.model == MODEL and reply.object == "chat.completion"

    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1, "tokens should stream"


def test_openai_client_completions_n_seed_and_stop(client, tok):
    first = client.completions.create(model=MODEL, prompt="the dog ran", max_tokens=12, temperature=0)
    text = first.choices[0].text
    assert first.object == "text_completion" and first.usage.completion_tokens == 12
    assert first.choices[0].finish_reason == "length" and len(text) > 3

    # A random model writes mostly byte tokens: stop at a printable pair in the middle of its text.
    stop = next(text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].isascii()
                and text[i : i + 2].isprintable())
    cut = client.completions.create(model=MODEL, prompt="the dog ran", max_tokens=12, temperature=0, stop=stop)
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"

    streamed = client.completions.create(model=MODEL, prompt="the dog ran", max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text

    kwargs = dict(model=MODEL, prompt=["a cat", "the house"], max_tokens=8, temperature=1.0, n=2, seed=3)
    batch = client.completions.create(**kwargs)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.usage.prompt_tokens == len(tok.encode("a cat", bos=True)) + len(tok.encode("the house", bos=True))
    assert 0 < batch.usage.completion_tokens <= 4 * 8
    again = client.completions.create(**kwargs)
    assert [c.text for c in again.choices] == [c.text for c in batch.choices], "same seed, same samples"

    echoed = client.completions.create(model=MODEL, prompt="the dog ran", max_tokens=12, temperature=0, echo=True)
    assert echoed.choices[0].text == "the dog ran" + text


def test_models_health_metrics_and_page(url, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 4
    metrics = httpx.get(url + "/metrics").text
    assert 'llamaforge_http_requests_total{path="/v1/models",status="200"}' in metrics
    for name in ("llamaforge_generated_tokens_total", "llamaforge_tokens_per_second", "llamaforge_queue_depth"):
        assert f"\n{name} " in metrics
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="system"', 'id="temperature"', 'id="top-p"', 'id="stop"', 'id="send"'):
        assert element in page.text


# --------------------------------------------------------------------------- bad and hostile input

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def chat_body(**fields):
    # Greedy: the random model then never says EOS early, so long requests really are long.
    return json.dumps({"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 4, "temperature": 0, **fields})


HOSTILE = {
    "bad json": (CHAT, '{"model": "tiny", "messages": [', 400),
    "not json at all": (CHAT, "hello", 400),
    "json array": (CHAT, "[1, 2, 3]", 400),
    "json null": (CHAT, "null", 400),
    "empty body": (CHAT, "", 400),
    "invalid utf-8": (CHAT, b'{"model": "\xff\xfe"}', 400),
    "temperature as string": (CHAT, chat_body(temperature="0.5"), 400),
    "max_tokens as float": (CHAT, chat_body(max_tokens=5.5), 400),
    "n as bool": (CHAT, chat_body(n=True), 400),
    "messages as string": (CHAT, json.dumps({"model": MODEL, "messages": "hi"}), 400),
    "content as number": (CHAT, chat_body(messages=[{"role": "user", "content": 5}]), 400),
    "huge max_tokens": (CHAT, chat_body(max_tokens=10**30), 400),
    "max_tokens over context": (CHAT, chat_body(max_tokens=129), 400),
    "max_tokens zero": (CHAT, chat_body(max_tokens=0), 400),
    "temperature too high": (CHAT, chat_body(temperature=2.5), 400),
    "temperature NaN": (CHAT, chat_body(temperature=float("nan")), 400),
    "top_p negative": (CHAT, chat_body(top_p=-0.1), 400),
    "n zero": (CHAT, chat_body(n=0), 400),
    "n too large": (CHAT, chat_body(n=1000), 400),
    "five stop strings": (CHAT, chat_body(stop=["a", "b", "c", "d", "e"]), 400),
    "seed too large": (CHAT, chat_body(seed=2**70), 400),
    "unknown field": (CHAT, chat_body(frobnicate=True), 400),
    "unknown field in message": (CHAT, chat_body(messages=[{"role": "user", "content": "hi", "x": 1}]), 400),
    "unsupported penalty": (CHAT, chat_body(frequency_penalty=1.0), 400),
    "unknown model": (CHAT, chat_body(model="gpt-4"), 404),
    "missing model": (CHAT, json.dumps({"messages": OK_MESSAGES}), 400),
    "no messages": (CHAT, chat_body(messages=[]), 400),
    "bad role": (CHAT, chat_body(messages=[{"role": "tool", "content": "x"}]), 400),
    "assistant first": (CHAT, chat_body(messages=[{"role": "assistant", "content": "x"},
                                                  {"role": "user", "content": "y"}]), 400),
    "two users in a row": (CHAT, chat_body(messages=[{"role": "user", "content": "x"},
                                                     {"role": "user", "content": "y"}]), 400),
    "ends with assistant": (CHAT, chat_body(messages=[{"role": "user", "content": "x"},
                                                      {"role": "assistant", "content": "y"}]), 400),
    "late system message": (CHAT, chat_body(messages=[{"role": "user", "content": "x"},
                                                      {"role": "assistant", "content": "y"},
                                                      {"role": "system", "content": "z"}]), 400),
    "[INST] in content": (CHAT, chat_body(messages=[{"role": "user", "content": "a [INST] b"}]), 400),
    "[/INST] in assistant": (CHAT, chat_body(messages=[{"role": "user", "content": "x"},
                                                       {"role": "assistant", "content": "[/INST]"},
                                                       {"role": "user", "content": "y"}]), 400),
    "<<SYS>> in system": (CHAT, chat_body(messages=[{"role": "system", "content": "<<SYS>>"},
                                                    {"role": "user", "content": "y"}]), 400),
    "lone surrogate in content": (CHAT, chat_body(messages=[{"role": "user", "content": "a\ud800b"}]), 400),
    "lone surrogate in prompt": ("/v1/completions", json.dumps({"model": MODEL, "prompt": "\udfff"}), 400),
    "prompt over context": (CHAT, chat_body(messages=[{"role": "user", "content": "cat " * 400}]), 400),
    "1 MB message": (CHAT, chat_body(messages=[{"role": "user", "content": "x" * 1_000_000}]), 400),
    "2 MB body": (CHAT, chat_body(messages=[{"role": "user", "content": "x" * 2_000_000}]), 413),
    "token id out of vocab": ("/v1/completions", json.dumps({"model": MODEL, "prompt": [1, 99999]}), 400),
    "negative token id": ("/v1/completions", json.dumps({"model": MODEL, "prompt": [1, -5]}), 400),
    "empty token list": ("/v1/completions", json.dumps({"model": MODEL, "prompt": []}), 400),
    "prompt as object": ("/v1/completions", json.dumps({"model": MODEL, "prompt": {"a": 1}}), 400),
    "suffix": ("/v1/completions", json.dumps({"model": MODEL, "prompt": "a", "suffix": "b"}), 400),
    "unknown path": ("/v1/engines", "{}", 404),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_request_gets_a_4xx_json_error(url, case):
    path, body, status = HOSTILE[case]
    response = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_more_bad_requests_and_the_server_keeps_serving(url, client):
    assert httpx.get(url + CHAT).status_code == 405
    wrong_type = httpx.post(url + CHAT, content=chat_body(), headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 400
    odd_but_valid = [{"role": "user", "content": [{"type": "text", "text": "\u0000 \u202e"}]}]
    reply = client.chat.completions.create(model=MODEL, messages=odd_but_valid, max_tokens=5, stop=[""], top_p=0)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert httpx.get(url + "/health").json()["status"] == "ok"
    with pytest.raises(openai.BadRequestError, match="INST"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "[INST]"}])


def test_api_key_and_context(model, tok):
    app = create_app(copy.deepcopy(model), tok, model_name=MODEL, api_key="s3cret", context=64)
    with serve_in_background(app) as base:
        assert httpx.get(base + "/v1/models").status_code == 401
        wrong = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(base + CHAT, content="{bad").status_code == 401, "auth comes before parsing"
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/health").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=OK_MESSAGES, max_tokens=3).choices
        assert good.models.retrieve(MODEL).context_length == 64
        with pytest.raises(openai.BadRequestError, match="context holds only 64"):
            good.chat.completions.create(model=MODEL, messages=OK_MESSAGES, max_tokens=65)
        reply = good.chat.completions.create(model=MODEL, messages=OK_MESSAGES, max_tokens=64, temperature=0)
        assert reply.usage.total_tokens == 64 and reply.choices[0].finish_reason == "length"


# --------------------------------------------------------------------------- limits and failure


def test_full_queue_answers_503_with_retry_after(model, tok):
    app = create_app(slowed(model, 0.02), tok, model_name=MODEL, max_batch=1, max_queue=1)
    engine = app.state.engine
    long, short = json.loads(chat_body(max_tokens=100)), json.loads(chat_body(max_tokens=3))
    with serve_in_background(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        queued = {}
        with http.stream("POST", CHAT, json={**long, "stream": True}) as running:
            lines = running.iter_lines()  # keep it: a discarded line iterator closes the connection
            next(lines)
            waiting = threading.Thread(target=lambda: queued.update(response=httpx.post(base + CHAT, json=short)))
            waiting.start()
            wait_until(lambda: engine.queue_depth == 1, what="a queued request")
            busy = http.post(CHAT, json=short)
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["code"] == "overloaded"
        waiting.join(timeout=10)  # closing the stream freed the row for it
        assert queued["response"].status_code == 200
        assert 'path="/v1/chat/completions",status="503"} 1' in http.get("/metrics").text


def test_client_disconnect_frees_its_slot(model, tok):
    app = create_app(slowed(model, 0.03), tok, model_name=MODEL, max_batch=2)
    engine = app.state.engine
    body = json.loads(chat_body(max_tokens=100))  # 100 steps x 30 ms: at least 3 s if nobody stopped it
    with serve_in_background(app) as base, httpx.Client(base_url=base) as http:
        with http.stream("POST", CHAT, json={**body, "stream": True}) as streaming:
            lines = streaming.iter_lines()
            assert next(lines).startswith("data: ")
            assert engine.active == 1
        wait_until(lambda: engine.active == 0, timeout=1.5, what="the streaming slot to be freed")
        with pytest.raises(httpx.ReadTimeout):
            http.post(CHAT, json=body, timeout=0.3)
        wait_until(lambda: engine.active == 0, timeout=1.5, what="the non-streaming slot to be freed")
        assert http.post(CHAT, json=json.loads(chat_body(max_tokens=2))).status_code == 200


def test_request_timeout(model, tok):
    app = create_app(slowed(model, 0.02), tok, model_name=MODEL, max_batch=1, timeout=0.5)
    engine = app.state.engine
    body = json.loads(chat_body(max_tokens=100))  # 100 steps x 20 ms: 2 s, past the 0.5 s limit
    with serve_in_background(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        start = time.monotonic()
        cut_short = http.post(CHAT, json=body)
        assert time.monotonic() - start < 1.8
        assert cut_short.status_code == 200 and cut_short.json()["choices"][0]["finish_reason"] == "length"
        assert 0 < cut_short.json()["usage"]["completion_tokens"] < 100
        # A request with no time limit holds the only row; one that waits behind it expires in the queue.
        hog = engine.submit([[tok.bos_id]], SamplingParams(max_new_tokens=100), lambda event: None)
        wait_until(lambda: engine.active == 1, what="the hog to start")
        queued = http.post(CHAT, json=body)
        assert queued.status_code == 503 and queued.headers["Retry-After"] == "1", queued.text
        hog.cancel()


def test_a_failing_step_fails_its_requests_not_the_server(model, tok):
    broken, failing = copy.deepcopy(model), threading.Event()

    def device_error(module, args):
        time.sleep(0.01)
        if failing.is_set():
            raise RuntimeError("simulated device error")

    broken.register_forward_pre_hook(device_error)
    app = create_app(broken, tok, model_name=MODEL)
    with serve_in_background(app) as base:
        failing.set()
        response = httpx.post(base + CHAT, json=json.loads(chat_body()), timeout=10)
        assert response.status_code == 500 and "simulated device error" in response.json()["error"]["message"]

        failing.clear()
        ai = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        stream = ai.chat.completions.create(model=MODEL, messages=OK_MESSAGES, max_tokens=100, temperature=0,
                                            stream=True)
        next(iter(stream))
        failing.set()
        with pytest.raises(openai.APIError, match="simulated device error"):
            list(stream)  # the error arrives as an SSE event in the middle of the stream

        failing.clear()
        assert httpx.post(base + CHAT, json=json.loads(chat_body()), timeout=10).status_code == 200
        assert app.state.engine.alive and app.state.engine.stats.errors == 2


def test_bounded_load_50_clients(model, tok):
    """50 clients hammer a small queue for a few seconds: only 200s and deliberate 503s, and the
    server is healthy afterwards. (The 30 s version with numbers is benchmarks/bench_serve.py.)"""
    app = create_app(copy.deepcopy(model), tok, model_name=MODEL, max_batch=8, max_queue=8, timeout=30)
    statuses: Counter = Counter()

    async def client_loop(http: httpx.AsyncClient, seed: int, until: float):
        rng = random.Random(seed)
        while time.monotonic() < until:
            body = json.loads(chat_body(messages=[{"role": "user", "content": random_text(rng, 1, 12)}],
                                        max_tokens=rng.randint(1, 24), stream=rng.random() < 0.5))
            response = await http.post(CHAT, json=body)
            statuses[response.status_code] += 1
            if response.status_code == 503:
                await asyncio.sleep(0.05)

    async def run(base):
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
            until = time.monotonic() + 4
            await asyncio.gather(*(client_loop(http, i, until) for i in range(50)))

    with serve_in_background(app) as base:
        asyncio.run(run(base))
        assert set(statuses) <= {200, 503}, statuses
        # How many 200s fit in 4 s depends on the machine; that both kinds occur does not.
        assert statuses[200] > 0 and statuses[503] > 0, statuses
        assert httpx.get(base + "/health").json()["status"] == "ok"
        assert app.state.engine.alive and app.state.engine.stats.errors == 0
        check = httpx.post(base + CHAT, json=json.loads(chat_body()), timeout=10)
        assert check.status_code == 200


def test_batching_shares_decode_steps(model, tok):
    """Concurrent requests share forward passes: 8 requests in a batch of 8 take about as many
    model steps as one request, not 8x. (Wall-clock throughput is measured by
    benchmarks/bench_serve.py, not asserted here, since it depends on the machine's load.)"""
    prompts = [tok.encode(f"the {w} sat on", bos=True) for w in WORDS[:8]]
    params = SamplingParams(max_new_tokens=48)

    def steps_and_tokens(max_batch: int) -> tuple[int, int]:
        engine = Engine(copy.deepcopy(model), tok, max_batch=max_batch, max_queue=16)
        got = Collector()
        for i, prompt in enumerate(prompts):  # all queued before the engine starts
            engine.submit([prompt], params, got.callback(i))
        engine.start()
        wait_until(lambda: all(got.done(i) for i in range(len(prompts))), timeout=60)
        engine.stop()
        return engine.stats.steps, engine.stats.generated_tokens

    sequential_steps, sequential_tokens = steps_and_tokens(1)
    batched_steps, batched_tokens = steps_and_tokens(8)
    assert batched_tokens == sequential_tokens  # greedy: the same replies either way
    assert sequential_steps >= sequential_tokens - len(prompts)  # one row: a step per token
    assert batched_steps * 4 <= sequential_steps, (batched_steps, sequential_steps, sequential_tokens)


# --------------------------------------------------------------------------- the command line


def test_serve_cli(model, tok, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--help"])
    assert exit_info.value.code == 0
    save_model(model, tmp_path / "llama-2-tiny", format="meta")
    shutil.copy(tok.model_path, tmp_path / "tokenizer.model")
    process = subprocess.Popen(
        [sys.executable, "-m", "llamaforge.serve", str(tmp_path / "llama-2-tiny"), "--port", "0",
         "--max-batch", "2", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert "llama-2-tiny" in line and "http://127.0.0.1:" in line, line + process.stderr.read()
        base = line.split(" on ")[1].split()[0]
        assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == "llama-2-tiny"
        # Greedy: at OpenAI's default temperature 1 the first token was EOS about once in a few
        # hundred runs (0 completion tokens), once in CI.
        reply = httpx.post(base + "/v1/completions",
                           json={"model": "llama-2-tiny", "prompt": "the", "max_tokens": 3, "temperature": 0})
        assert reply.json()["usage"]["completion_tokens"] == 3
    finally:
        process.terminate()
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


def test_serve_without_fastapi_says_how_to_install():
    code = "import sys; sys.modules['fastapi'] = None\nimport llamaforge.serve"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'llamaforge[serve]'" in result.stderr
