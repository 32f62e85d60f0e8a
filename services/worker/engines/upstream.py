"""What an OpenAI-compatible sidecar says on the wire: SSE events and errors, turned into our types.

llama-server and vLLM both answer errors as `{"error": {...}}` (older vLLM: a flat `{"message", ...}`),
and both may send an error as an SSE event after a 200. Every failure leaves here as an APIError,
so no httpx exception ever reaches the worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from services.common.errors import APIError, InvalidRequest, PayloadTooLarge, ServiceUnavailable
from services.worker.engines.base import ContextLengthExceeded, EngineError

DONE = "[DONE]"


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """JSON payloads of `data:` lines until `[DONE]`; comments (pings) and other fields are skipped."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == DONE:
            return
        if data:
            try:
                yield json.loads(data)
            except ValueError as exc:
                raise EngineError(f"the sidecar sent a malformed event: {data[:200]!r}") from exc


def _error_fields(body: Any) -> tuple[str, str, str | None]:
    """(message, type, param) from either error shape; falls back to the raw text."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err), str(err.get("type") or ""), err.get("param")
        if isinstance(err, str):
            return err, "", None
    return str(body), "", None


def error_from_body(status: int, body: Any, upstream: str) -> APIError:
    """The APIError for a sidecar's error answer: the client's mistakes stay 400s, the rest are ours."""
    message, kind, param = _error_fields(body)
    if status in (400, 422):
        if "context" in kind or "context length" in message.lower():
            return ContextLengthExceeded(message, param=param or "max_tokens")
        return InvalidRequest(message, param=param)
    if status == 413:
        return PayloadTooLarge(message)
    if status in (429, 503):
        return ServiceUnavailable(f"{upstream} is busy or loading: {message}")
    return EngineError(f"{upstream} answered {status}: {message}")


def error_from_response(response: httpx.Response, upstream: str) -> APIError:
    """Read a failed response (streamed or not) and map it."""
    raw = response.read().decode(errors="replace")
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw
    return error_from_body(response.status_code, body, upstream)


def error_from_transport(exc: httpx.HTTPError, upstream: str, url: str) -> APIError:
    """Connection failures mean the sidecar is down (retry elsewhere); a stalled stream is an engine fault."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ServiceUnavailable(f"{upstream} at {url} is unreachable: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return EngineError(f"{upstream} at {url} did not answer in time ({type(exc).__name__})")
    return EngineError(f"{upstream} at {url} failed: {type(exc).__name__}: {exc}")
