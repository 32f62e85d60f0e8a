"""Chat and text completions as OpenAI spells them: bodies, chunks, usage, logprobs, in OpenAI's field order.

Built as plain dicts; a stream's per-token chunk is a template filled with the token's JSON string
(`ChunkFormat.deltas`). `CompletionAnswer` and `CompletionChunks` are these routes' side of the serving
pipeline (serving.py): how their events read as one body or as a stream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # the C encoder json.dumps uses for str

from services.api.pipeline.sse import DONE_LINE, sse, sse_text
from services.common.events import Delta, Done, Embedded, Usage


def chat_completion(
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    usage: Usage,
    tool_calls: list[dict] | None = None,
    logprobs: list[dict] | None = None,
) -> dict:
    message: dict = {"role": "assistant", "content": text or (None if tool_calls else text), "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(logprobs),
                "finish_reason": finish,
            }
        ],
        "usage": usage.to_openai(),
        "system_fingerprint": None,
    }


def text_completion(
    rid: str, created: int, model: str, text: str, finish: str, usage: Usage, logprobs: list[dict] | None = None
) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": text_logprobs(logprobs), "finish_reason": finish}],
        "usage": usage.to_openai(),
        "system_fingerprint": None,
    }


def chat_logprobs(entries: list[dict] | tuple[dict, ...] | None) -> dict | None:
    """A chat choice's logprobs: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    return None if entries is None else {"content": list(entries), "refusal": None}


def text_logprobs(entries: list[dict] | tuple[dict, ...] | None, offset: int = 0) -> dict | None:
    """The legacy completions shape of the same entries: parallel lists, offsets into the choice's text
    (the echoed prompt's first, when echo is on). An echoed prompt's first token has no value and no
    alternatives: null, as OpenAI writes it, where a generated token without alternatives has {}."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [_alternatives(e) for e in entries],
        "text_offset": offsets,
    }


def _alternatives(entry: dict) -> dict[str, float] | None:
    if entry["logprob"] is None:  # however the engine wrote them (vLLM's legacy lists arrive as [])
        return None
    return {t["token"]: t["logprob"] for t in entry.get("top_logprobs") or ()}


def merge_tool_calls(calls: list[dict], deltas: tuple[dict, ...]) -> None:
    """Fold streamed tool-call deltas into whole calls, by index, as the SDKs do: arguments concatenate."""
    for delta in deltas:
        index = delta.get("index", 0)
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call, fn = calls[index], delta.get("function") or {}
        call["id"] = delta.get("id") or call["id"]
        call["function"]["name"] = fn.get("name") or call["function"]["name"]
        call["function"]["arguments"] += fn.get("arguments") or ""


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    delta: dict,
    finish: str | None,
    with_usage: bool,
    logprobs: tuple[dict, ...] | None = None,
) -> dict:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": chat_logprobs(logprobs), "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = None
    return body


def text_chunk(
    rid: str,
    created: int,
    model: str,
    text: str,
    finish: str | None,
    with_usage: bool,
    logprobs: dict | None = None,
) -> dict:
    body = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
    }
    if with_usage:
        body["usage"] = None
    return body


def usage_chunk(rid: str, created: int, model: str, obj: str, usage: Usage) -> dict:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage.to_openai(),
    }


MARK = "\ue000"
"""A private-use character standing for the text in a chunk template."""


@dataclass(frozen=True)
class ChunkFormat:
    """How one endpoint spells its chunks (chat.completion.chunk or text_completion)."""

    chat: bool
    rid: str
    created: int
    model: str
    with_usage: bool

    def opening(self) -> dict | None:
        if not self.chat:
            return None
        return chat_chunk(
            self.rid, self.created, self.model, {"role": "assistant", "content": ""}, None, self.with_usage
        )

    def delta(self, text: str) -> dict:
        if self.chat:
            return chat_chunk(self.rid, self.created, self.model, {"content": text}, None, self.with_usage)
        return text_chunk(self.rid, self.created, self.model, text, None, self.with_usage)

    def deltas(self, pieces: Sequence[str], event_id: str) -> bytes:
        """`sse(self.delta(p))` for each piece, the event id on the last, as one write. A stream writes one
        chunk per token, so the chunk is a template filled with the piece's JSON string, not a dict dumped."""
        head, tail = self._template
        out = [head + encode_basestring(p) + tail for p in pieces]
        out[-1] = f"id: {event_id}\n{out[-1]}"
        return "".join(out).encode()

    @functools.cached_property
    def _template(self) -> tuple[str, str]:
        head, tail = sse_text(self.delta(MARK)).split(encode_basestring(MARK))
        return head, tail

    def rich(self, event: Delta, offset: int = 0) -> dict:
        """A delta with tool calls or logprobs, one chunk (`offset`: generated characters before it)."""
        if self.chat:
            delta: dict = {"content": event.text} if event.text else {}
            if event.tool_calls:
                delta["tool_calls"] = list(event.tool_calls)
            return chat_chunk(self.rid, self.created, self.model, delta, None, self.with_usage, event.logprobs)
        lp = text_logprobs(event.logprobs, offset)
        return text_chunk(self.rid, self.created, self.model, event.text, None, self.with_usage, lp)

    def closing(self, finish: str) -> dict:
        if self.chat:
            return chat_chunk(self.rid, self.created, self.model, {}, finish, self.with_usage)
        return text_chunk(self.rid, self.created, self.model, "", finish, self.with_usage)

    def usage(self, done: Done) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return usage_chunk(self.rid, self.created, self.model, obj, done.usage)


class CompletionChunks:
    """A chat or text completion's stream (serving.Chunks): one chunk per token as OpenAI sends them, the
    closing chunk with its finish reason, the usage chunk when asked for, then [DONE]."""

    def __init__(self, fmt: ChunkFormat, *, last: bytes = DONE_LINE) -> None:
        self.fmt = fmt
        self.last = last
        """What ends the stream: [DONE], or nothing for a fanned-out choice (its merged stream ends once)."""
        self.offset = 0
        """Generated characters so far: completions' logprobs text_offset."""

    def opening(self) -> bytes:
        opening = self.fmt.opening()
        return sse(opening) if opening else b""

    def delta(self, event: Delta, event_id: str) -> bytes:
        offset, self.offset = self.offset, self.offset + len(event.text)
        if event.tool_calls or event.logprobs:
            return sse(self.fmt.rich(event, offset), event_id)
        pieces = event.chunks()  # one chunk per token, as OpenAI sends, in one write
        return self.fmt.deltas(pieces, event_id) if pieces else b""

    def done(self, event: Done, event_id: str) -> bytes:
        closing = sse(self.fmt.closing(event.finish_reason), event_id)
        return closing + sse(self.fmt.usage(event)) if self.fmt.with_usage else closing

    def error(self, error: dict, event_id: str | None = None) -> bytes:
        return sse({"error": error}, event_id)

    def closing(self) -> bytes:
        return self.last


class CompletionAnswer:
    """A chat or text completion's JSON body (serving.Answer): the text, tool calls and logprobs of its deltas."""

    def __init__(self, fmt: ChunkFormat) -> None:
        self.fmt = fmt
        self.parts: list[str] = []
        self.calls: list[dict] = []
        self.logprobs: list[dict] | None = None

    def take(self, event: Delta | Embedded) -> None:
        if not isinstance(event, Delta):
            return
        self.parts.append(event.text)
        if event.tool_calls:
            merge_tool_calls(self.calls, event.tool_calls)
        if event.logprobs:
            self.logprobs = [*(self.logprobs or ()), *event.logprobs]

    def body(self, done: Done) -> dict:
        fmt, text, finish = self.fmt, "".join(self.parts), done.finish_reason
        if fmt.chat:
            return chat_completion(fmt.rid, fmt.created, fmt.model, text, finish, done.usage, self.calls, self.logprobs)
        return text_completion(fmt.rid, fmt.created, fmt.model, text, finish, done.usage, self.logprobs)
