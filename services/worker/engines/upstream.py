"""What an OpenAI-compatible sidecar says on the wire: SSE events and errors, turned into our types.

llama-server and vLLM both answer errors as `{"error": {...}}` (older vLLM: a flat `{"message", ...}`),
and both may send an error as an SSE event after a 200. Every failure leaves here as an APIError,
so no httpx exception ever reaches the worker.

The size of the prompt comes back with the completion (vLLM's continuous usage, llama-server's
timings on every chunk), so no request needs a /tokenize call of its own before it.

A transport failure is told to the client in general words (the engine is down, slow or broke off) and
logged here in full: the sidecar's address and the socket's error are ours, not the client's to see.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import h11
import httpx

from services.common.errors import APIError, InvalidRequest, PayloadTooLarge, ServiceUnavailable
from services.worker.engines.base import (
    ContextLengthExceeded,
    EngineError,
    Finish,
    GenerationItem,
    TokenChunk,
    completion_too_long,
    prompt_too_long,
)

log = logging.getLogger(__name__)

DONE = "[DONE]"
UNREACHABLE = "The model's engine is unavailable; retry shortly."
TOO_SLOW = "The model's engine did not answer in time."
BROKE_OFF = "The model's engine broke off its answer."


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
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("n_prompt_tokens"), int) and isinstance(err.get("n_ctx"), int):
            return prompt_too_long(err["n_prompt_tokens"], err["n_ctx"])  # llama-server's exceed_context_size_error
        if "context" in kind or "context length" in message.lower():
            return ContextLengthExceeded(message, param=param or "max_tokens")
        return InvalidRequest(message, param=param)
    if "requires --jinja" in message:  # llama-server running a built-in template (Gemma) cannot render tools
        return InvalidRequest(f"This model's chat template cannot render tools ({upstream}: {message}).", param="tools")
    if status == 413:
        return PayloadTooLarge(message)
    if status in (429, 503):
        return ServiceUnavailable(f"{upstream} is busy or loading: {message}")
    return EngineError(f"{upstream} answered {status}: {message}")


def error_from_response(response: httpx.Response, upstream: str) -> APIError:
    """Read a failed response (streamed or not) and map it."""
    return error_from_raw(response.status_code, response.read(), upstream)


def error_from_raw(status: int, raw: bytes, upstream: str) -> APIError:
    """A failed answer's bytes mapped: its JSON body if it has one, else its text."""
    text = raw.decode(errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return error_from_body(status, body, upstream)


def error_from_transport(exc: httpx.HTTPError, upstream: str, url: str) -> APIError:
    """Connection failures mean the sidecar is down (retry elsewhere); a stalled stream is an engine fault."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return _told(ServiceUnavailable(UNREACHABLE), f"{upstream} at {url} is unreachable: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return _told(EngineError(TOO_SLOW), f"{upstream} at {url} did not answer in time ({type(exc).__name__})")
    return _told(EngineError(BROKE_OFF), f"{upstream} at {url} failed: {type(exc).__name__}: {exc}")


def error_from_socket(exc: OSError | h11.ProtocolError, upstream: str, url: str) -> APIError:
    """`error_from_transport` for our own sockets and h11 (sse_client): refused or
    unresolvable is a sidecar that is down, a timeout, a cut stream or a garbled answer an engine fault."""
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return _told(ServiceUnavailable(UNREACHABLE), f"{upstream} at {url} is unreachable: {exc}")
    if isinstance(exc, TimeoutError):
        return _told(EngineError(TOO_SLOW), f"{upstream} at {url} did not answer in time")
    return _told(EngineError(BROKE_OFF), f"{upstream} at {url} failed: {type(exc).__name__}: {exc}")


def _told(error: APIError, detail: str) -> APIError:
    """`error` for the client; `detail`, with the sidecar's address, for our log only."""
    log.warning("%s (the client is told: %s)", detail, error.message)
    return error


class CompletionStream:
    """Folds one response's chunks into TokenChunks with exact token counts and a final Finish.

    Token counts come from the sidecar's running count (llama-server's timings.predicted_n, vLLM's
    continuous usage) so text held back for a possible stop string is charged to the chunk that
    carries it; without one, each text delta counts as one token. Usage in the last chunk is the truth.

    The prompt's size arrives with the first token, before its text is passed on: an explicit
    max_tokens that does not fit is refused there (llama-server would just stop at its context),
    and a defaulted one is cut where the context ends (`cut`: the caller closes the stream).
    """

    def __init__(self, upstream: str, *, context: int, max_tokens: int, explicit: bool) -> None:
        self.upstream = upstream
        self.context = context
        self.max_tokens = max_tokens
        self.explicit = explicit
        self.prompt_tokens: int | None = None
        self.sent = 0
        self.seen = 0
        self.finished: str | None = None
        self.cut = False
        self.usage: dict[str, Any] | None = None
        self._first_at: float | None = None

    def feed(self, event: dict[str, Any]) -> Iterator[TokenChunk]:
        if "error" in event:
            raise _stream_error(event, self.upstream)
        if event.get("usage"):
            self.usage = event["usage"]
        if self.prompt_tokens is None:
            self._learn_prompt(event)
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text = choice.get("text")
            if text is None:
                text = delta.get("content")
            calls = tool_call_deltas(delta.get("tool_calls"))
            logprobs = logprob_entries(choice.get("logprobs"))
            self._count(event, bool(text or calls))
            if text or calls or logprobs:
                if self._first_at is None:
                    self._first_at = time.monotonic()
                yield TokenChunk(text or "", self.seen - self.sent, tool_calls=calls, logprobs=logprobs)
                self.sent = self.seen
            if choice.get("finish_reason"):
                self.finished = choice["finish_reason"]
        if self.finished is None and self.prompt_tokens is not None and self.prompt_tokens + self.seen >= self.context:
            self.finished, self.cut = "length", True

    def ends_within(self, seconds: float) -> bool:
        """Whether the answer's last token (its max_tokens, or the context's end) is due within `seconds` at
        its pace so far; the last token itself always is, however slow the pace."""
        if self._first_at is None or self.seen < 2:
            return False
        per_token = (time.monotonic() - self._first_at) / (self.seen - 1)
        room = min(self.max_tokens, self.context - (self.prompt_tokens or 0)) - self.seen
        return (room - 1) * per_token <= seconds

    def _learn_prompt(self, event: dict[str, Any]) -> None:
        usage = event.get("usage") or {}
        timings = event.get("timings") or {}
        if "prompt_tokens" in usage:
            prompt = int(usage["prompt_tokens"])
        elif "prompt_n" in timings:
            prompt = int(timings["prompt_n"]) + int(timings.get("cache_n") or 0)  # cache_n: reused from a slot
        else:
            return
        self.prompt_tokens = prompt
        if prompt >= self.context:
            raise prompt_too_long(prompt, self.context)
        if self.explicit and prompt + self.max_tokens > self.context:
            raise completion_too_long(prompt, self.max_tokens, self.context)

    def _count(self, event: dict[str, Any], has_text: bool) -> None:
        running = (event.get("usage") or {}).get("completion_tokens")
        if running is None:
            running = (event.get("timings") or {}).get("predicted_n")
        if running is not None:
            self.seen = max(self.seen, int(running))
        if has_text and self.seen <= self.sent:
            self.seen = self.sent + 1

    def finish(self) -> Iterator[GenerationItem]:
        if self.finished is None:
            raise EngineError(f"{self.upstream} ended the stream before it finished")
        usage = self.usage or {}
        completion = int(usage.get("completion_tokens", self.seen))
        if completion > self.sent:
            yield TokenChunk("", completion - self.sent)
            self.sent = completion
        reason: Literal["stop", "length", "tool_calls"] = (
            self.finished if self.finished in ("length", "tool_calls") else "stop"  # type: ignore[assignment]
        )
        yield Finish(reason, int(usage.get("prompt_tokens", self.prompt_tokens or 0)), self.sent)


def tool_call_deltas(calls: list[dict[str, Any]] | None) -> tuple[dict[str, Any], ...] | None:
    """A sidecar's streamed tool-call deltas in OpenAI's exact shape: ids `call_...`, index on each.
    llama-server makes up ids of its own style; the prefix is how OpenAI's look, and the same id stays
    the same in every chunk and in the assistant turn the client sends back."""
    if not calls:
        return None
    out = []
    for position, call in enumerate(calls):
        delta: dict[str, Any] = {"index": call.get("index", position)}
        if call.get("id"):
            delta["id"] = call["id"] if str(call["id"]).startswith("call_") else f"call_{call['id']}"
            delta["type"] = "function"
        fn = call.get("function") or {}
        delta["function"] = {k: fn[k] for k in ("name", "arguments") if fn.get(k) is not None}
        delta["function"].setdefault("arguments", "")
        out.append(delta)
    return tuple(out)


def logprob_entries(logprobs: dict[str, Any] | None) -> tuple[dict[str, Any], ...] | None:
    """OpenAI chat logprobs entries from either shape a sidecar sends: chat's `content` list (llama-server
    answers completions that way too) or the legacy completions lists (vLLM's /v1/completions)."""
    if not logprobs:
        return None
    if "content" in logprobs:
        return tuple(_entry(e) for e in logprobs["content"] or ())
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        {
            "token": token,
            "logprob": value,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in (top or {}).items()],
        }
        for token, value, top in zip(tokens, values, tops, strict=False)
    )


def _entry(entry: dict[str, Any]) -> dict[str, Any]:
    """One token's entry as OpenAI writes it (llama-server adds token ids, which OpenAI does not send)."""
    out = {k: entry.get(k) for k in ("token", "logprob", "bytes")}
    out["top_logprobs"] = [
        {k: t.get(k) for k in ("token", "logprob", "bytes")} for t in entry.get("top_logprobs") or ()
    ]
    return out


def _stream_error(event: dict[str, Any], upstream: str) -> APIError:
    err = event["error"]
    status = err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), int) else 500
    return error_from_body(status, event, upstream)
