"""The web chat page in a real browser (Playwright driving Debian's headless Chromium): send a
message, watch the reply stream in, stop a generation, go on with a second turn, screenshot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

from llamaforge.serve import create_app  # noqa: E402
from llamaforge.serve.cli import serve_in_background  # noqa: E402

from .test_serve import MODEL, build_model, build_tokenizer, slowed, wait_until  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def speaking_in_words(model, tok):
    """The random model with its output layer steered to whole-word pieces (no byte pieces, no
    EOS), so that it writes (random) words and the screenshot shows a readable chat."""
    words = torch.tensor([not tok.id_to_piece(i).startswith("<") for i in range(tok.vocab_size)])
    with torch.no_grad():
        model.output.weight[~words] = 0.0
        model.output.weight[words] *= 20.0
    return model


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def test_chat_page_streams_stops_and_continues(browser, tmp_path):
    tok = build_tokenizer(tmp_path / "tokenizer.model")
    # 40 ms a step: a full-context reply takes seconds, so there is time to watch it stream and stop it.
    app = create_app(slowed(speaking_in_words(build_model(tok), tok), 0.04), tok, model_name=MODEL)
    engine = app.state.engine
    with serve_in_background(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        sent = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.goto(url + "/")
        playwright.expect(page.locator("#model")).to_contain_text(MODEL)

        page.fill("#system", "You are a cat. Answer like one.")
        page.locator("#temperature").fill("0.3")
        page.locator("#top-p").fill("0.8")
        page.fill("#input", "the cat sat on the mat")
        page.press("#input", "Enter")

        reply = page.locator(".msg.assistant").first
        playwright.expect(reply).to_have_class("msg assistant streaming")
        wait_until(lambda: len(reply.inner_text()) > 0, what="streamed text")
        early = reply.inner_text()
        wait_until(lambda: len(reply.inner_text()) > len(early) + 3, what="more streamed text")
        assert engine.active == 1
        page.click("#stop")
        playwright.expect(reply).to_have_attribute("data-done", "true")
        playwright.expect(reply.locator(".note")).to_have_text("(stopped)")
        wait_until(lambda: engine.active == 0, timeout=2, what="the stopped request to free its slot")
        assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()

        first = sent[0]
        assert first["stream"] is True and first["temperature"] == 0.3 and first["top_p"] == 0.8
        assert first["messages"] == [{"role": "system", "content": "You are a cat. Answer like one."},
                                     {"role": "user", "content": "the cat sat on the mat"}]

        page.fill("#max-tokens", "12")
        page.fill("#input", "and then?")
        page.click("#send")
        second = page.locator(".msg.assistant").nth(1)
        playwright.expect(second).to_have_attribute("data-done", "true", timeout=20_000)
        assert second.inner_text().strip()
        history = sent[1]["messages"]
        assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
        assert history[2]["content"].strip() and history[3]["content"] == "and then?"
        assert sent[1]["max_tokens"] == 12

        page.fill("#input", "a [INST] b")  # the server refuses chat tags: the page shows the error
        page.press("#input", "Enter")
        playwright.expect(page.locator(".msg.error")).to_contain_text("[INST]")

        shot = tmp_path / "chat.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if keep := shutil.os.environ.get("LLAMAFORGE_SCREENSHOT"):
            shutil.copy(shot, keep)
        page.close()
