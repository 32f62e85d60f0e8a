"""The Responses API's output items and streamed events, from a chat job's events.

OpenAI's order, each an SSE `event:` line plus a JSON body with `type` and a rising `sequence_number`:
response.created and response.in_progress; for the text, response.output_item.added and
response.content_part.added before its first response.output_text.delta; for each tool call,
response.output_item.added (a `function_call` item) and its response.function_call_arguments.delta;
at the end response.output_text.done, response.content_part.done, response.function_call_arguments.done
and response.output_item.done per item, then response.completed (response.incomplete when
max_output_tokens cut it). An error after the 200 is an `error` event; there is no `[DONE]` line in
this API. As for chat, the 200 waits for the first token or a quiet tick, so an error known before it
is an HTTP status (serving.py, which runs the stream; this module only spells it).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

from services.common.events import Delta, Done, Embedded

Build = Callable[..., dict]
"""build(status, output, usage=None) -> the Response object (responses.response_object, bound)."""


class EventWriter:
    """Numbers events in order and spells them as SSE."""

    def __init__(self) -> None:
        self._numbers = itertools.count()

    def __call__(self, kind: str, **fields: object) -> bytes:
        body = {"type": kind, "sequence_number": next(self._numbers), **fields}
        return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def silent(kind: str, **fields: object) -> bytes:
    """The non-streaming path builds the same items and writes no events."""
    return b""


class ResponseOutput:
    """The output items as the deltas arrive: a `message` once text comes, a `function_call` per tool call,
    numbered in the order they began (output_index). `emit` writes the events that announce each step."""

    def __init__(self, rid: str, emit: Callable[..., bytes] = silent) -> None:
        self.key = rid.removeprefix("resp_")
        self.emit = emit
        self.text: list[str] | None = None
        self.text_index = -1
        self.calls: list[dict] = []
        """Function call items in call order, each with its output_index under '_at'."""
        self._next = 0

    def _open(self) -> int:
        self._next += 1
        return self._next - 1

    def _where(self) -> dict:
        return {"item_id": f"msg_{self.key}", "output_index": self.text_index, "content_index": 0}

    def feed(self, event: Delta) -> Iterator[bytes]:
        for piece in event.chunks():
            if self.text is None:
                self.text, self.text_index = [], self._open()
                yield self.emit(
                    "response.output_item.added", output_index=self.text_index, item=self._message(None, "in_progress")
                )
                yield self.emit("response.content_part.added", **self._where(), part=text_part(""))
            self.text.append(piece)
            yield self.emit("response.output_text.delta", **self._where(), delta=piece, logprobs=[])
        for delta in event.tool_calls or ():
            yield from self._call_delta(delta)

    def _call_delta(self, delta: dict) -> Iterator[bytes]:
        index, fn = delta.get("index", 0), delta.get("function") or {}
        while len(self.calls) <= index:
            n = len(self.calls)
            call = {"id": f"fc_{self.key}_{n}", "type": "function_call", "status": "in_progress", "arguments": ""}
            self.calls.append(call | {"call_id": f"call_{self.key[:24]}_{n}", "name": "", "_at": self._open()})
        call = self.calls[index]
        call["call_id"] = delta.get("id") or call["call_id"]
        call["name"] = fn.get("name") or call["name"]
        if not call.get("_announced"):
            call["_announced"] = True
            yield self.emit("response.output_item.added", output_index=call["_at"], item=_public(call))
        if fn.get("arguments"):
            call["arguments"] += fn["arguments"]
            yield self.emit("response.function_call_arguments.delta", item_id=call["id"], output_index=call["_at"],
                            delta=fn["arguments"])  # fmt: skip

    def close(self, status: str) -> Iterator[bytes]:
        """Finish every item: text and arguments done, each item done (an answer with neither gets an empty message)."""
        if self.text is None and not self.calls:
            self.text, self.text_index = [], self._open()
            yield self.emit(
                "response.output_item.added", output_index=self.text_index, item=self._message(None, "in_progress")
            )
            yield self.emit("response.content_part.added", **self._where(), part=text_part(""))
        if self.text is not None:
            text = "".join(self.text)
            yield self.emit("response.output_text.done", **self._where(), text=text, logprobs=[])
            yield self.emit("response.content_part.done", **self._where(), part=text_part(text))
            yield self.emit("response.output_item.done", output_index=self.text_index, item=self._message(text, status))
        for call in self.calls:
            call["status"] = "completed"
            yield self.emit("response.function_call_arguments.done", item_id=call["id"], output_index=call["_at"],
                            arguments=call["arguments"], name=call["name"])  # fmt: skip
            yield self.emit("response.output_item.done", output_index=call["_at"], item=_public(call))

    def items(self, status: str) -> list[dict]:
        out = [(call["_at"], _public(call)) for call in self.calls]
        if self.text is not None:
            out.append((self.text_index, self._message("".join(self.text), status)))
        return [item for _, item in sorted(out, key=lambda pair: pair[0])]

    def _message(self, text: str | None, status: str) -> dict:
        return message_item(f"msg_{self.key}", text, status)


def _public(call: dict) -> dict:
    return {k: v for k, v in call.items() if not k.startswith("_")}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """The assistant's `message` output item; `text` None while no part was added yet."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def final_status(done: Done) -> str:
    return "incomplete" if done.finish_reason == "length" else "completed"


class ResponseChunks:
    """The Responses API's event stream (serving.Chunks): created and in_progress, the items' events as the
    deltas arrive, then every item done and completed (or incomplete); no [DONE] line in this API."""

    def __init__(self, rid: str, build: Build) -> None:
        self.build = build
        self.emit = EventWriter()
        self.output = ResponseOutput(rid, self.emit)

    def opening(self) -> bytes:
        created = self.emit("response.created", response=self.build("in_progress", []))
        return created + self.emit("response.in_progress", response=self.build("in_progress", []))

    def delta(self, event: Delta, event_id: str) -> bytes:
        return b"".join(self.output.feed(event))

    def done(self, event: Done, event_id: str) -> bytes:
        status = final_status(event)
        items = b"".join(self.output.close(status))
        return items + self.emit(
            f"response.{status}", response=self.build(status, self.output.items(status), event.usage)
        )

    def error(self, error: dict, event_id: str | None = None) -> bytes:
        return self.emit("error", code=error["code"], message=error["message"], param=error["param"])

    def closing(self) -> bytes:
        return b""


class ResponseAnswer:
    """The Response object as one JSON body (serving.Answer): the same items, no events written."""

    def __init__(self, rid: str, build: Build) -> None:
        self.build = build
        self.output = ResponseOutput(rid)

    def take(self, event: Delta | Embedded) -> None:
        if isinstance(event, Delta):
            for _ in self.output.feed(event):
                pass

    def body(self, done: Done) -> dict:
        status = final_status(done)
        for _ in self.output.close(status):
            pass
        return self.build(status, self.output.items(status), done.usage)
