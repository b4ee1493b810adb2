"""Serving: an OpenAI-compatible HTTP API and a web chat page over a continuous-batching engine.

    from llamaforge.serve import create_app      # FastAPI app; run it with uvicorn
    llamaforge serve PATH [--port 8000] [--api-key KEY]      # or: python -m llamaforge.serve PATH

Needs the `serve` extra (FastAPI and uvicorn): pip install 'llamaforge[serve]'.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"llamaforge.serve needs {e.name}, which is not installed: pip install 'llamaforge[serve]'", name=e.name
    ) from e

from .app import create_app
from .engine import Engine, Event, QueueFull


def main(argv: list[str] | None = None) -> int:
    """`llamaforge serve`; see `llamaforge serve --help`."""
    from .cli import main as serve_main

    return serve_main(argv)


__all__ = ["Engine", "Event", "QueueFull", "create_app", "main"]
