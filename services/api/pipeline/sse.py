"""Server-Sent Events for streamed completions: events from the job's stream become OpenAI chunks.

The 200 and the SSE headers wait for the first event that decides the reply (see `open_stream`), so
an error known before the first token is an HTTP status, as OpenAI answers it. After that the
generator's `finally` runs when the client goes away (gunicorn closes the iterator on a failed write),
so a disconnect cancels the generation. Quiet ticks send an SSE comment, which is also how a
disconnect is noticed while the job still waits in the queue.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # the C encoder json.dumps uses for str

import falcon
import redis

from services.api.observability.metrics import ApiMetrics
from services.api.observability.overhead import GatewayClock
from services.api.pipeline import shapes
from services.api.pipeline.gateway import Gateway
from services.api.pipeline.leases import Flight
from services.api.pipeline.queue_wait import QueueWait
from services.common.errors import APIError, InternalError, ServiceUnavailable, from_status
from services.common.events import Delta, Done, Event, Failed, Started

log = logging.getLogger(__name__)
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
        return shapes.chat_chunk(
            self.rid, self.created, self.model, {"role": "assistant", "content": ""}, None, self.with_usage
        )

    def delta(self, text: str) -> dict:
        if self.chat:
            return shapes.chat_chunk(self.rid, self.created, self.model, {"content": text}, None, self.with_usage)
        return shapes.text_chunk(self.rid, self.created, self.model, text, None, self.with_usage)

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
            return shapes.chat_chunk(self.rid, self.created, self.model, delta, None, self.with_usage, event.logprobs)
        lp = shapes.text_logprobs(event.logprobs, offset)
        return shapes.text_chunk(self.rid, self.created, self.model, event.text, None, self.with_usage, lp)

    def closing(self, finish: str) -> dict:
        if self.chat:
            return shapes.chat_chunk(self.rid, self.created, self.model, {}, finish, self.with_usage)
        return shapes.text_chunk(self.rid, self.created, self.model, "", finish, self.with_usage)

    def usage(self, done: Done) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return shapes.usage_chunk(self.rid, self.created, self.model, obj, done.usage)


Item = tuple[str, Event] | None


def _release(flight: Flight, gateway: Gateway, metrics: ApiMetrics, *, finished: bool) -> None:
    """Give back what the request holds; an unfinished one is cancelled."""
    if not finished:
        metrics.cancelled(flight.job.model, flight.job.deadline)
    gateway.release(flight, finished=finished)


def read_head(items: Iterator[Item]) -> list[Item]:
    """Items up to and including the first that decides the reply: a delta, done or error event, or a
    quiet tick (the job still waits in the queue, so keep-alives must flow). `started` does not decide."""
    head: list[Item] = []
    for item in items:
        head.append(item)
        if item is None or not isinstance(item[1], Started):
            break
    return head


def open_stream(
    flight: Flight,
    fmt: ChunkFormat,
    gateway: Gateway,
    metrics: ApiMetrics,
    clock: GatewayClock | None = None,
    wait: QueueWait | None = None,
) -> Iterator[bytes]:
    """The SSE body, or the HTTP error that answers instead of it.

    OpenAI answers a streamed request whose error is known before the first token (context too long,
    model gone, worker lost) with that status, so SDKs raise BadRequestError rather than APIError. The
    reply commits to 200 at the first delta or at the first quiet tick (SSE_KEEPALIVE without an event,
    liveness checked): a job still queued then streams keep-alives as before, and a first token is never
    held back.
    """
    if wait is not None:
        wait.report = True
    items = gateway.events(flight, wait)
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
    return stream_events(flight, fmt, itertools.chain(head, items), gateway, metrics, clock, wait)


def stream_events(
    flight: Flight,
    fmt: ChunkFormat,
    items: Iterable[Item],
    gateway: Gateway,
    metrics: ApiMetrics,
    clock: GatewayClock | None = None,
    wait: QueueWait | None = None,
) -> Iterator[bytes]:
    """The committed stream: every event as a chunk, an error after the 200 as an error event.
    `clock`'s overhead goes to the histogram once the last chunk is written (headers left long before).
    While the job waits, quiet ticks say where it stands (`wait`); once it starts, a stream that has
    said so hears its final wait in one more comment."""
    job = flight.job
    finished = False
    first_token = True
    told_queued = False
    offset = 0  # generated characters so far: completions' logprobs text_offset
    try:
        opening = fmt.opening()
        if opening:
            yield sse(opening)
        try:
            for item in items:
                if item is None:
                    if wait is not None and wait.waiting:
                        told_queued = True
                        yield wait.comment()
                    else:
                        yield KEEPALIVE
                    continue
                event_id, event = item
                if told_queued and wait is not None and not wait.waiting:
                    told_queued = False
                    yield wait.started_comment()
                if isinstance(event, Delta):
                    if first_token:
                        metrics.first_token(job.model, time.time() - job.accepted_at)
                        first_token = False
                    if event.tool_calls or event.logprobs:
                        yield sse(fmt.rich(event, offset), event_id)
                        offset += len(event.text)
                        continue
                    offset += len(event.text)
                    pieces = event.chunks()  # one chunk per token, as OpenAI sends, in one write
                    if pieces:
                        yield fmt.deltas(pieces, event_id)
                elif isinstance(event, Done):
                    if clock is not None:
                        clock.last_event()
                    metrics.finished(job.model, event.usage.completion_tokens, event.finish_reason, job.accepted_at)
                    yield sse(fmt.closing(event.finish_reason), event_id)
                    if fmt.with_usage:
                        yield sse(fmt.usage(event))
                    finished = True
                elif isinstance(event, Failed):
                    finished = True
                    yield sse(
                        {
                            "error": {
                                "message": event.message,
                                "type": event.type,
                                "param": event.param,
                                "code": event.code,
                            }
                        },
                        event_id,
                    )
        except APIError as exc:
            yield sse(exc.envelope())
        except redis.RedisError as exc:
            log.warning("stream %s lost Redis: %s", job.request_id, exc)
            yield sse(ServiceUnavailable("The queue (Redis) became unavailable; please retry.").envelope())
        except Exception:
            log.exception("stream %s broke", job.request_id)
            yield sse(InternalError("The server had an error while streaming.").envelope())
        yield DONE_LINE
        if clock is not None and clock.last_event_at is not None:
            metrics.gateway_overhead(job.model, clock.seconds())
    finally:
        _release(flight, gateway, metrics, finished=finished)
