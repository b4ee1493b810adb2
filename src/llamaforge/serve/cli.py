"""`llamaforge serve PATH`: the OpenAI-compatible server and web chat page for a checkpoint."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from .app import create_app


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where the help text already names one (or it would print a key)."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from ..cli import _add_model_options

    p = argparse.ArgumentParser(
        prog="llamaforge serve",
        description="Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, "
        "/v1/models; streaming with SSE), with a web chat page at /, /health and Prometheus /metrics. "
        "Concurrent requests share the model through continuous batching. Point any OpenAI client at "
        "http://HOST:PORT/v1.",
        formatter_class=_HelpFormatter,
    )
    _add_model_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback exposes the model to the network")
    p.add_argument("--port", type=int, default=8000, help="port (0: pick a free one, printed at start)")
    p.add_argument("--api-key", default=os.environ.get("LLAMAFORGE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $LLAMAFORGE_API_KEY)")
    p.add_argument("--model-name", help="model id clients must send (default: the checkpoint folder's name)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; beyond: 503")
    p.add_argument("--context", type=int, default=None,
                   help="tokens per sequence, prompt included (default: the model's max_seq_len); the KV cache "
                   "holds max-batch x context positions per layer, so lower it if memory is short")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take, queueing included")
    p.add_argument("--max-body-mb", type=float, default=1.0, help="largest request body accepted (MiB)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (access lines at info)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_batch < 1 or args.max_queue < 0 or args.timeout <= 0:
        print("llamaforge serve: --max-batch must be >= 1, --max-queue >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not args.api_key:
        print(f"llamaforge serve: warning: binding {args.host} without --api-key lets anyone who can reach "
              "this machine use the model", file=sys.stderr)
    try:
        sock = _bind(args.host, args.port)  # before loading: a busy port should fail in a second, not minutes
    except OSError as e:
        print(f"llamaforge serve: cannot bind {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 1
    from ..cli import _load_for_inference

    model, tokenizer = _load_for_inference(args)
    name = args.model_name or Path(args.model).resolve().name
    try:
        app = create_app(model, tokenizer, model_name=name, api_key=args.api_key, max_batch=args.max_batch,
                         max_queue=args.max_queue, timeout=args.timeout, context=args.context,
                         max_body_bytes=int(args.max_body_mb * 2**20))
    except (ValueError, RuntimeError) as e:  # bad settings, or no memory for the KV cache
        print(f"llamaforge serve: {e}", file=sys.stderr)
        return 1
    engine = app.state.engine
    print(f"llamaforge serve: '{name}' on {_url(sock)}  (chat page at /, OpenAI API at /v1; batch {engine.max_batch}, "
          f"queue {engine.max_queue}, context {engine.context}, KV cache {engine.cache_bytes / 2**20:,.0f} MiB)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0


@contextmanager
def serve_in_background(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Run `app` under uvicorn in a thread (tests, benchmarks, notebooks); yields its base URL."""
    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llamaforge-uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread stopped during startup; see the log above")
            time.sleep(0.01)
        yield _url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
