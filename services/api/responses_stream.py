"""The Responses API's streamed events, from a chat job's events.

OpenAI's order, each an SSE `event:` line plus a JSON body with `type` and a rising `sequence_number`:
response.created, response.in_progress, response.output_item.added, response.content_part.added, then
response.output_text.delta per token, and response.output_text.done, response.content_part.done,
response.output_item.done and response.completed (response.incomplete when max_output_tokens cut it).
An error after the 200 is an `error` event; there is no `[DONE]` line in this API. As for chat, the
200 waits for the first token or a quiet tick, so an error known before it is an HTTP status.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator

import redis

from services.api.gateway import Gateway
from services.api.leases import Flight
from services.api.metrics import ApiMetrics
from services.api.sse import KEEPALIVE, Item, read_head
from services.common.errors import APIError, InternalError, ServiceUnavailable, from_status
from services.common.events import Delta, Done, Failed, Usage

log = logging.getLogger(__name__)
Build = Callable[..., dict]
"""build(status, output, usage=None) -> the Response object (responses.response_object, bound)."""


class EventWriter:
    """Numbers events in order and spells them as SSE."""

    def __init__(self) -> None:
        self._numbers = itertools.count()

    def __call__(self, kind: str, **fields: object) -> bytes:
        body = {"type": kind, "sequence_number": next(self._numbers), **fields}
        return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _release(flight: Flight, gateway: Gateway, metrics: ApiMetrics, *, finished: bool) -> None:
    if not finished:
        metrics.cancelled(flight.job.model)
    gateway.release(flight, finished=finished)


def open_response_stream(flight: Flight, build: Build, gateway: Gateway, metrics: ApiMetrics) -> Iterator[bytes]:
    """The event stream, or the HTTP error that answers instead of it (see sse.open_stream)."""
    items = gateway.events(flight)
    try:
        head = read_head(items)
    except BaseException:
        _release(flight, gateway, metrics, finished=False)
        raise
    last = head[-1] if head else None
    if last is not None and isinstance(last[1], Failed):
        _release(flight, gateway, metrics, finished=True)
        failed = last[1]
        raise from_status(failed.status, failed.message, code=failed.code, param=failed.param)
    return response_events(flight, build, itertools.chain(head, items), gateway, metrics)


def response_events(
    flight: Flight, build: Build, items: Iterable[Item], gateway: Gateway, metrics: ApiMetrics
) -> Iterator[bytes]:
    job = flight.job
    item_id = "msg_" + job.request_id.removeprefix("resp_")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    emit = EventWriter()
    parts: list[str] = []
    finished = False
    try:
        yield emit("response.created", response=build("in_progress", []))
        yield emit("response.in_progress", response=build("in_progress", []))
        yield emit("response.output_item.added", output_index=0, item=message_item(item_id, None, "in_progress"))
        yield emit("response.content_part.added", **where, part=text_part(""))
        try:
            for item in items:
                if item is None:
                    yield KEEPALIVE
                    continue
                event = item[1]
                if isinstance(event, Delta):
                    if not parts:
                        metrics.first_token(job.model, time.time() - job.accepted_at)
                    pieces = event.chunks()
                    parts += pieces
                    if pieces:
                        yield b"".join(
                            emit("response.output_text.delta", **where, delta=p, logprobs=[]) for p in pieces
                        )
                elif isinstance(event, Done):
                    finished = True
                    metrics.finished(job.model, event.usage.completion_tokens, event.finish_reason, job.accepted_at)
                    yield from _closing(emit, build, where, "".join(parts), event.finish_reason, event.usage)
                elif isinstance(event, Failed):
                    finished = True
                    yield emit("error", code=event.code, message=event.message, param=event.param)
        except APIError as exc:
            yield emit("error", code=exc.code, message=exc.message, param=exc.param)
        except redis.RedisError as exc:
            log.warning("response stream %s lost Redis: %s", job.request_id, exc)
            err = ServiceUnavailable("The queue (Redis) became unavailable; please retry.")
            yield emit("error", code=err.code, message=err.message, param=None)
        except Exception:
            log.exception("response stream %s broke", job.request_id)
            err = InternalError("The server had an error while streaming.")
            yield emit("error", code=err.code, message=err.message, param=None)
    finally:
        _release(flight, gateway, metrics, finished=finished)


def _closing(emit: EventWriter, build: Build, where: dict, text: str, finish: str, usage: Usage) -> Iterator[bytes]:
    status = "incomplete" if finish == "length" else "completed"
    item_id = where["item_id"]
    yield emit("response.output_text.done", **where, text=text, logprobs=[])
    yield emit("response.content_part.done", **where, part=text_part(text))
    message = message_item(item_id, text, status)
    yield emit("response.output_item.done", output_index=0, item=message)
    yield emit(f"response.{status}", response=build(status, [message], usage))


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """The assistant's `message` output item; `text` None while no part was added yet."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
