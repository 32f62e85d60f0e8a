"""Server-Sent Events for streamed completions: events from the job's stream become OpenAI chunks.

The generator's `finally` runs when the client goes away (gunicorn closes the iterator on a failed
write), so a disconnect cancels the generation. Quiet ticks send an SSE comment, which is also how a
disconnect is noticed while the job still waits in the queue.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from services.api import shapes
from services.api.admission import Admission
from services.api.gateway import Gateway
from services.api.metrics import ApiMetrics
from services.common.errors import APIError, InternalError, ServiceUnavailable
from services.common.events import Delta, Done, Failed
from services.common.jobs import Job

log = logging.getLogger(__name__)
DONE_LINE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n"
"""A comment line with no blank line after it: it keeps proxies' read timeouts alive and dispatches
nothing. With a blank line, clients that remember the last `id:` (the openai package) would dispatch an
empty event and fail to parse it."""


def sse(data: dict, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


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

    def closing(self, finish: str) -> dict:
        if self.chat:
            return shapes.chat_chunk(self.rid, self.created, self.model, {}, finish, self.with_usage)
        return shapes.text_chunk(self.rid, self.created, self.model, "", finish, self.with_usage)

    def usage(self, done: Done) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return shapes.usage_chunk(self.rid, self.created, self.model, obj, done.usage)


def stream_events(
    job: Job, fmt: ChunkFormat, gateway: Gateway, admission: Admission, metrics: ApiMetrics
) -> Iterator[bytes]:
    finished = False
    first_token = True
    try:
        opening = fmt.opening()
        if opening:
            yield sse(opening)
        try:
            for item in gateway.events(job):
                if item is None:
                    yield KEEPALIVE
                    continue
                event_id, event = item
                if isinstance(event, Delta):
                    if first_token:
                        metrics.first_token(job.model, time.time() - job.accepted_at)
                        first_token = False
                    if event.text:
                        yield sse(fmt.delta(event.text), event_id)
                elif isinstance(event, Done):
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
    finally:
        if not finished:
            gateway.cancel(job.request_id)
            metrics.cancelled(job.model)
        admission.release(job.request_id)
        gateway.finish(job.request_id)
