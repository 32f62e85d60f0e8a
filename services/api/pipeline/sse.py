"""Server-Sent Events: the wire spelling every stream shares (completions' chunks, the Responses API's events).

The stream's life (when it commits to 200, what a disconnect cancels, the quiet ticks) is serving.py's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import falcon

DONE_LINE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n"
"""A comment line with no blank line after it: it keeps proxies' read timeouts alive and dispatches
nothing. With a blank line, clients that remember the last `id:` (the openai package) would dispatch an
empty event and fail to parse it."""


def respond_with(resp: falcon.Response, body: Iterable[bytes]) -> None:
    """Answer with an event stream that neither a client cache nor nginx's proxy buffer holds back."""
    resp.stream = body
    resp.content_type = "text/event-stream; charset=utf-8"
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")


def sse(data: dict, event_id: str | None = None) -> bytes:
    return sse_text(data, event_id).encode()


def sse_text(data: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"
