"""The OpenAI-compatible HTTP API (FastAPI) in front of the batching engine.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both streamed over SSE or not),
`GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text) and the web chat page at `/`.
Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a
malformed body, wrong types, unknown fields and out-of-range values, 401 without the API key,
404 for an unknown model or path, 413 for a body over the limit, 503 with `Retry-After` when
the queue is full, 500 only for a failure of the server itself.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat_format import ChatFormatError, encode_dialog, validate_dialog
from ..generate import SamplingParams
from .engine import CANCELLED, ERROR, TIMEOUT, Engine, Event, QueueFull

STATIC = Path(__file__).parent / "static"
MAX_CHOICES = 16  # n (times the number of prompts, for completions)
MAX_STOP_STRINGS = 4  # as OpenAI
RETRY_AFTER_SECONDS = 1
GENERATION_ERRORS = (400, 401, 404, 413, 500, 503)
# SPEC §4: the reference chat samples at temperature 0.6, top-p 0.9. Completions keep OpenAI's defaults.
CHAT_DEFAULTS = {"temperature": 0.6, "top_p": 0.9}
COMPLETION_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16}


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # strict: "0.5" is not a number and true is not an int, as in OpenAI's API;
    # extra="forbid": an unknown field is an error ("Unrecognized request argument"), not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None


class _SamplingBody(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None


class ChatCompletionRequest(_SamplingBody):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None


class CompletionRequest(_SamplingBody):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]], Field(min_length=1)]
    )
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)


# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _documented(*statuses: int, stream: bool = False) -> dict:
    """OpenAPI `responses` of a route: its errors (in OpenAI's shape) and, if it streams, SSE."""
    reasons = {400: "Malformed or invalid request", 401: "Missing or wrong API key", 404: "Unknown model",
               413: "Request body too large", 500: "Generation failed", 503: "Queue full or request timed out"}
    responses: dict = {status: {"model": ErrorBody, "description": reasons[status]} for status in statuses}
    if stream:
        responses[200] = {"description": "The result, or with `stream: true` server-sent events",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    return responses


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, type=self.type,
                              headers=self.headers)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _overloaded(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="overloaded",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first["type"] == "json_invalid":
        param = None
        detail = first.get("ctx", {}).get("error", "")
        message = f"The request body is not valid JSON ({detail}). Send a JSON object."
    elif first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif not loc:
        message = f"The request body must be a JSON object with the request's fields: {first['msg']}"
    else:
        message = f"Invalid value for '{param}': {first['msg']}"
    return error_response(400, message, param=param)


# --------------------------------------------------------------------------- the gate: auth, body limit, counts


class _Gate:
    """ASGI middleware run before routing: the API key check, the request body limit (the body
    is buffered here and replayed to the app) and per-path/status request counts."""

    PROTECTED = ("/v1/", "/metrics")
    ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")
    DRAIN_LIMIT = 64 << 20  # past this, stop reading an oversized body and just close

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, counts: Counter):
        self.app, self.api_key, self.max_body_bytes, self.counts = app, api_key, max_body_bytes, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_and_count(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_and_count)
        finally:
            path = scope["path"].rstrip("/") or "/"
            label = path if path in self.ROUTES else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
            self.counts[(label, status)] += 1

    async def _handle(self, scope, receive, send):
        if self.api_key and scope["path"].startswith(self.PROTECTED) and not self._authorized(scope):
            response = error_response(
                401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )
            return await response(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, problem = await self._read_body(scope, receive)
        if problem is not None:
            return await problem(scope, receive, send)
        if body is None:
            return  # the client left while sending
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.api_key.encode())

    async def _read_body(self, scope, receive) -> tuple[bytes | None, Response | None]:
        limit = self.max_body_bytes
        too_large = error_response(
            413, f"The request body is larger than this server's limit of {limit} bytes.", code="request_too_large"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.DRAIN_LIMIT):
            return None, too_large if declared.isdigit() else error_response(400, "Invalid Content-Length header.")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > self.DRAIN_LIMIT:
                break
            more = message.get("more_body", False)
        # An oversized body is read to its end before answering: a client still sending would
        # otherwise see a reset connection instead of the 413.
        return (None, too_large) if size > limit else (b"".join(chunks), None)


# --------------------------------------------------------------------------- bridging engine events


class _Call:
    """One request in the engine, its events delivered into this event loop's queue."""

    def __init__(self, engine: Engine, prompts: list[list[int]], params: SamplingParams, n: int, *,
                 reply: bool, timeout: float | None):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()
        self.count = len(prompts) * n
        self.texts = [""] * self.count
        self.finish: list[str | None] = [None] * self.count
        self.tokens = [0] * self.count
        self.prompt_tokens = sum(map(len, prompts))
        try:
            self.handle = engine.submit(prompts, params, self._push, n=n, timeout=timeout, reply=reply)
        except QueueFull as e:
            raise _overloaded(f"The server is busy ({e}); retry after {RETRY_AFTER_SECONDS} s.") from e

    def _push(self, event: Event) -> None:  # called on the engine's thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish)

    async def next(self) -> Event | None:
        """The next event, recorded; None once the client has disconnected."""
        event = await self.events.get()
        if event is not None:
            if event.finish_reason != ERROR:  # an error event carries the message, not text
                self.texts[event.index] += event.text
            self.tokens[event.index] = event.n_tokens
            if event.finish_reason is not None:
                self.finish[event.index] = event.finish_reason
        return event

    async def watch_disconnect(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.handle.cancel()
        self.events.put_nowait(None)

    def failure(self, event: Event) -> APIError | None:
        """An error to answer instead of a result, for an event that ends the request badly."""
        if event.finish_reason == ERROR:
            return APIError(500, f"Generation failed: {event.text}", type="server_error")
        if event.finish_reason == CANCELLED:
            return _overloaded("The server is shutting down.")
        if event.finish_reason == TIMEOUT and not any(self.tokens):
            return _overloaded("The request waited in the queue past its time limit.")
        return None

    def usage(self) -> dict[str, int]:
        completion = sum(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def _finish_reason(reason: str | None) -> str | None:
    # A request that ran out of time keeps what it generated, like one that ran out of tokens.
    return "length" if reason == TIMEOUT else reason


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# --------------------------------------------------------------------------- the app


def create_app(
    model,
    tokenizer,
    *,
    model_name: str = "llamaforge",
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    timeout: float | None = 600.0,
    max_body_bytes: int = 1 << 20,
    context: int | None = None,
) -> FastAPI:
    """The server for `model` and `tokenizer`: an OpenAI-compatible API and the chat page.

    max_batch: sequences decoded together; max_queue: requests waiting for a slot before new
    ones get 503; timeout: seconds a request may take, queueing included (on expiry it ends
    with what it has, finish_reason "length", or 503 if it never started); api_key: required
    as a Bearer token on /v1 and /metrics when set; context: tokens per sequence, prompt
    included (default: the model's max_seq_len; less shrinks the KV cache). The engine thread
    runs while the app does (FastAPI lifespan); `app.state.engine` is it.
    """
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, context=context)
    context = engine.context
    counts: Counter = Counter()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="llamaforge", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for a llamaforge model, and a web chat page at /.")
    app.state.engine = engine
    app.openapi = lambda: _openapi_without_422(app)
    app.add_middleware(_Gate, api_key=api_key, max_body_bytes=max_body_bytes, counts=counts)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(ChatFormatError)
    async def _bad_dialog(request: Request, exc: ChatFormatError):
        return error_response(400, str(exc), param="messages")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"Unknown path {request.url.path}.", 405: f"Method {request.method} is not allowed here."}
        return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                              type="invalid_request_error" if exc.status_code < 500 else "server_error",
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return error_response(500, f"Internal server error: {type(exc).__name__}.", type="server_error")

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_name}'.",
                           param="model", code="model_not_found")

    def sampling(body: _SamplingBody, prompts: list[list[int]], max_tokens: int | None, defaults: dict,
                 param: str) -> SamplingParams:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise APIError(400, f"'{name}' is not supported by llamaforge; send 0 or leave it out.", param=name)
        longest = max(map(len, prompts))
        if longest >= context:
            raise APIError(400, f"This model's maximum context length is {context} tokens, but the {param} has "
                           f"{longest} tokens. Shorten the {param}.", param=param, code="context_length_exceeded")
        if max_tokens is not None and max_tokens > context:
            raise APIError(400, f"max_tokens is {max_tokens}, but this model's context holds only {context} tokens "
                           "(prompt included).", param="max_tokens")
        temperature = defaults["temperature"] if body.temperature is None else body.temperature
        top_p = defaults["top_p"] if body.top_p is None else body.top_p
        if top_p == 0:  # only the most likely token is left: that is greedy decoding
            temperature, top_p = 0.0, 1.0
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        # The engine caps max_tokens by the room each prompt leaves in the context.
        return SamplingParams(max_new_tokens=max_tokens or defaults.get("max_tokens", context),
                              temperature=temperature, top_p=top_p, stop_strings=stop, seed=body.seed)

    async def tokenize(encode, param: str):
        """Encode off the event loop (a long prompt takes a while); text that cannot be encoded,
        such as a lone surrogate escape, is the client's error."""
        try:
            return await asyncio.to_thread(encode)
        except ValueError as e:
            raise APIError(400, str(e), param=param) from e

    async def run(request: Request, call: _Call, stream: bool, render) -> Response:
        """Wait for the result, or for the first event of a stream, while watching for the client leaving."""
        watcher = asyncio.create_task(call.watch_disconnect(request))
        streaming = False
        try:
            while True:
                event = await call.next()
                if event is None:
                    return Response(status_code=499)  # client closed the request; nobody reads this
                if event.finish_reason is not None and (problem := call.failure(event)):
                    raise problem
                if stream or call.done:
                    break
            if not stream:
                return JSONResponse(render.result())
            streaming = True  # from here on the stream owns the request (and cancels it if the client leaves)
            return StreamingResponse(render.stream(event), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finally:
            watcher.cancel()
            if not streaming and not call.done:
                call.handle.cancel()

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health", responses=_documented(503))
    async def health():
        body = {"status": "ok" if engine.alive else "engine stopped", "model": model_name,
                "active_sequences": engine.active, "queue_depth": engine.queue_depth,
                "max_batch": engine.max_batch, "max_queue": engine.max_queue,
                "tokens_per_second": round(engine.stats.tokens_per_second(), 2)}
        return JSONResponse(body, status_code=200 if engine.alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=_documented(401))
    async def metrics():
        return PlainTextResponse(_prometheus(engine, counts), media_type="text/plain; version=0.0.4")

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "llamaforge",
                "context_length": context}

    @app.get("/v1/models", responses=_documented(401))
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", responses=_documented(401, 404))
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions", responses=_documented(*GENERATION_ERRORS, stream=True))
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by llamaforge.", param="logprobs")
        dialog = [{"role": m.role, "content": m.content if isinstance(m.content, str)
                   else "\n".join(part.text for part in m.content)} for m in body.messages]
        validate_dialog(dialog, for_prompt=True)
        prompt = await tokenize(lambda: encode_dialog(tokenizer, dialog), "messages")
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = sampling(body, [prompt], max_tokens, CHAT_DEFAULTS, "messages")
        n = body.n or 1
        call = _Call(engine, [prompt], params, n, reply=True, timeout=timeout)
        return await run(request, call, bool(body.stream), _ChatRender(call, model_name, body))

    @app.post("/v1/completions", responses=_documented(*GENERATION_ERRORS, stream=True))
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        for name, ok in (("suffix", body.suffix is None), ("logprobs", body.logprobs is None),
                         ("best_of", body.best_of in (None, body.n or 1))):
            if not ok:
                raise APIError(400, f"'{name}' is not supported by llamaforge; leave it out.", param=name)
        raw = body.prompt
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        if any(isinstance(p, list) and max(p) >= tokenizer.vocab_size for p in raw):
            raise APIError(400, f"Token ids in 'prompt' must be below the vocabulary size {tokenizer.vocab_size}.",
                           param="prompt")
        texts = [p if isinstance(p, str) else tokenizer.decode(p) for p in raw]
        prompts = await tokenize(
            lambda: [tokenizer.encode(p, bos=True) if isinstance(p, str) else list(p) for p in raw], "prompt")
        n = body.n or 1
        if len(prompts) * n > MAX_CHOICES:
            raise APIError(400, f"{len(prompts)} prompts x n={n} asks for more than {MAX_CHOICES} completions.",
                           param="n")
        params = sampling(body, prompts, body.max_tokens, COMPLETION_DEFAULTS, "prompt")
        call = _Call(engine, prompts, params, n, reply=False, timeout=timeout)
        echo = [texts[i // n] if body.echo else "" for i in range(call.count)]
        return await run(request, call, bool(body.stream), _CompletionRender(call, model_name, body, echo))

    return app


# --------------------------------------------------------------------------- responses


class _Render:
    """Builds one endpoint's JSON result or SSE stream from a `_Call`'s events."""

    object_name = ""

    def __init__(self, call: _Call, model_name: str, body: _SamplingBody):
        self.call, self.model_name = call, model_name
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def envelope(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model_name,
                "system_fingerprint": None, "choices": choices, **extra}

    async def stream(self, first: Event):
        """SSE: the first event (already taken from the queue), then the rest, then usage and [DONE]."""
        call = self.call
        usage = {"usage": None} if self.include_usage else {}
        try:
            for chunk in self.opening():
                yield _sse(self.envelope(self.chunk_object, [chunk], **usage))
            event: Event | None = first
            while True:
                if event.finish_reason is not None and (problem := call.failure(event)):
                    yield _sse({"error": {"message": problem.message, "type": problem.type, "param": None,
                                          "code": problem.code}})
                    break
                if event.text or event.finish_reason is not None:
                    yield _sse(self.envelope(self.chunk_object, [self.chunk(event)], **usage))
                if call.done:
                    if self.include_usage:
                        yield _sse(self.envelope(self.chunk_object, [], usage=call.usage()))
                    break
                event = await call.next()
            yield "data: [DONE]\n\n"
        finally:
            if not call.done:
                call.handle.cancel()  # the client went away mid-stream: free its rows


class _ChatRender(_Render):
    prefix, chunk_object = "chatcmpl", "chat.completion.chunk"

    def opening(self) -> list[dict]:
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(self.call.count)]

    def chunk(self, event: Event) -> dict:
        delta = {"content": event.text} if event.text else {}
        return {"index": event.index, "delta": delta, "logprobs": None,
                "finish_reason": _finish_reason(event.finish_reason)}

    def result(self) -> dict:
        call = self.call
        choices = [{"index": i, "message": {"role": "assistant", "content": call.texts[i]}, "logprobs": None,
                    "finish_reason": _finish_reason(call.finish[i])} for i in range(call.count)]
        return self.envelope("chat.completion", choices, usage=call.usage())


class _CompletionRender(_Render):
    prefix, chunk_object = "cmpl", "text_completion"

    def __init__(self, call: _Call, model_name: str, body: CompletionRequest, echo: list[str]):
        super().__init__(call, model_name, body)
        self.echo = echo

    def opening(self) -> list[dict]:
        return [{"index": i, "text": text, "logprobs": None, "finish_reason": None}
                for i, text in enumerate(self.echo) if text]

    def chunk(self, event: Event) -> dict:
        return {"index": event.index, "text": event.text, "logprobs": None,
                "finish_reason": _finish_reason(event.finish_reason)}

    def result(self) -> dict:
        call = self.call
        choices = [{"index": i, "text": self.echo[i] + call.texts[i], "logprobs": None,
                    "finish_reason": _finish_reason(call.finish[i])} for i in range(call.count)]
        return self.envelope("text_completion", choices, usage=call.usage())


def _openapi_without_422(app: FastAPI) -> dict:
    """FastAPI documents validation errors as 422; this server answers them 400, like OpenAI."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _prometheus(engine: Engine, counts: Counter) -> str:
    stats = engine.stats
    lines = ["# HELP llamaforge_http_requests_total HTTP requests answered, by path and status.",
             "# TYPE llamaforge_http_requests_total counter"]
    for (path, status), count in sorted(counts.items()):
        lines.append(f'llamaforge_http_requests_total{{path="{path}",status="{status}"}} {count}')
    for name, kind, value, help_text in [
        ("requests_total", "counter", stats.requests, "Generation requests accepted by the engine."),
        ("rejected_total", "counter", stats.rejected, "Requests turned away because the queue was full (503)."),
        ("engine_errors_total", "counter", stats.errors, "Decode steps that failed."),
        ("prompt_tokens_total", "counter", stats.prompt_tokens, "Prompt tokens prefilled."),
        ("generated_tokens_total", "counter", stats.generated_tokens, "Tokens sampled."),
        ("decode_steps_total", "counter", stats.steps, "Batched decode steps."),
        ("tokens_per_second", "gauge", round(stats.tokens_per_second(), 3), "Tokens sampled per second, last 10 s."),
        ("queue_depth", "gauge", engine.queue_depth, "Requests waiting for a batch slot."),
        ("active_sequences", "gauge", engine.active, "Sequences decoding now."),
        ("max_batch", "gauge", engine.max_batch, "Batch slots."),
    ]:
        lines += [f"# HELP llamaforge_{name} {help_text}", f"# TYPE llamaforge_{name} {kind}",
                  f"llamaforge_{name} {value}"]
    return "\n".join(lines) + "\n"
