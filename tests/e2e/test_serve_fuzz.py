"""Fuzz the server from its own OpenAPI schema (schemathesis): valid and invalid requests alike
must never get a 5xx, invalid ones must get a 4xx, and every answer must match the schema."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from llamaforge.serve import create_app  # noqa: E402
from llamaforge.serve.cli import serve_in_background  # noqa: E402

from .test_serve import MODEL, build_model, build_tokenizer  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("fuzz") / "tokenizer.model")
    # A short context keeps every generated request cheap (max_tokens is capped by it).
    app = create_app(build_model(tok, max_seq_len=48), tok, model_name=MODEL, max_batch=8, max_queue=64)
    with serve_in_background(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served[0] + "/openapi.json")


POSTS = ["/v1/chat/completions", "/v1/completions"]
GETS = ["/v1/models", "/v1/models/{model_id}", "/health", "/metrics"]
CASES = [(path, mode) for path in POSTS for mode in GenerationMode] + [(path, GenerationMode.POSITIVE) for path in GETS]


def served_model(case):
    """Positive bodies name the served model (an unknown one is a plain 404, tested elsewhere), so
    the fuzzer reaches sampling parameters, roles and prompts."""
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
    return case


@pytest.mark.parametrize(("path", "mode"), CASES, ids=[f"{path}-{mode.value}" for path, mode in CASES])
def test_fuzz_endpoint(api_schema, served, path, mode):
    # GET operations have no body and free-form strings only: nothing in them can be made invalid.
    method = "POST" if path in POSTS else "GET"
    strategy = api_schema[path][method].as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = strategy.map(served_model)

    @given(case=strategy)
    @settings(max_examples=50 if method == "POST" else 10, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def fuzz(case):
        case.call_and_validate(base_url=served[0], checks=CHECKS, timeout=30)

    fuzz()


def test_server_is_healthy_after_fuzzing(served):
    url, app = served
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert app.state.engine.alive and app.state.engine.stats.errors == 0
    metrics = httpx.get(url + "/metrics").text
    for path in POSTS:  # the fuzzer got through validation to generation, not only to 4xx
        assert f'path="{path}",status="200"' in metrics
    assert 'status="5' not in metrics
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
