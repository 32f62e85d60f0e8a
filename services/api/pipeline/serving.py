"""One serving pipeline: a request's life, from its body to its accounting, for every route that queues work.

Chat and text completions, their fanned-out choices (n > 1, prompt lists), /v1/responses and /v1/embeddings
all go through `Serving`: it reads and validates the body (`read`), checks the key's allowlist and the model's
kind (`authorize`), stamps the job (`job`), admits and enqueues it (`submit`: charged to the key's limits,
joined to the request's trace, the x-ratelimit-* and x-queue-wait-ms headers set), relays the job's events as
one JSON body (`answer`) or one event stream (`stream`), cancels what a departed client leaves behind,
releases what the request held and accounts for it (metrics, the gateway's overhead). A route says only what
is its own: its schema and refusals, what its job asks for, and how its events read (an `Answer` gathers its
JSON body, a `Chunks` spells its stream), as vLLM's OpenAIServing holds the lifecycle and each endpoint its
shapes. Errors leave by one path: before the reply commits, as the HTTP status (what OpenAI's SDKs raise as
BadRequestError and the like); after it, as the stream's own error event.

A stream's 200 and headers wait for the first event that decides the reply (`open_stream`); after that the
generator's `finally` runs when the client goes away (gunicorn closes the iterator on a failed write), so a
disconnect cancels the generation. Quiet ticks send an SSE comment (where the job stands in the queue while it
waits), which is also how a disconnect is noticed while the job still waits.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import falcon
import redis
from pydantic import BaseModel

from services.api.limits import key_limits
from services.api.observability.metrics import ApiMetrics
from services.api.observability.overhead import GatewayClock
from services.api.pipeline.body import read_json_body
from services.api.pipeline.gateway import Gateway
from services.api.pipeline.leases import Flight
from services.api.pipeline.queue_wait import QueueWait
from services.api.pipeline.sse import KEEPALIVE, respond_with
from services.common import tracing
from services.common.catalog import Catalog
from services.common.errors import APIError, ClientGone, InternalError, ServiceUnavailable, from_status
from services.common.events import Delta, Done, Embedded, Event, Failed, Started
from services.common.jobs import Job
from services.common.schemas import parse
from services.common.settings import Settings

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)
Item = tuple[str, Event] | None
"""What the gateway's event iterator yields: (stream id, event), or None for a quiet tick."""


class Answer(Protocol):
    """How a route's JSON body is gathered from its job's events."""

    def take(self, event: Delta | Embedded) -> None: ...

    def body(self, done: Done) -> dict: ...


class Chunks(Protocol):
    """How a route spells its event stream; an empty result writes nothing."""

    def opening(self) -> bytes: ...

    def delta(self, event: Delta, event_id: str) -> bytes: ...

    def done(self, event: Done, event_id: str) -> bytes: ...

    def error(self, error: dict, event_id: str | None = None) -> bytes:
        """An error after the reply committed; `error` is OpenAI's error object (message, type, param, code)."""
        ...

    def closing(self) -> bytes: ...


def read_head(items: Iterator[Item]) -> list[Item]:
    """Items up to and including the first that decides the reply: a delta, done or error event, or a
    quiet tick (the job still waits in the queue, so keep-alives must flow). `started` does not decide."""
    head: list[Item] = []
    for item in items:
        head.append(item)
        if item is None or not isinstance(item[1], Started):
            break
    return head


def failure(event: Failed) -> APIError:
    """The worker's error event as the exception that answers with its status."""
    return from_status(event.status, event.message, code=event.code, param=event.param)


class Serving:
    """Owns every generating or embedding request's lifecycle; one per app, shared by its routes."""

    def __init__(self, settings: Settings, catalog: Catalog, gateway: Gateway, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.catalog = catalog
        self.gateway = gateway
        self.metrics = metrics

    def read(self, req: falcon.Request, schema: type[Body]) -> Body:
        """The request's body, read within MAX_REQUEST_BYTES and validated once, here at the boundary."""
        return parse(schema, read_json_body(req, self.settings.max_request_bytes))

    def authorize(self, req: falcon.Request, model_id: str, kind: str, route: str) -> None:
        """403 for a model outside the key's allowlist, 400 for a model of the wrong kind for `route`."""
        key_limits.require_model(req, model_id, self.catalog)
        self.catalog.require_kind(model_id, kind, route)

    def job(self, req: falcon.Request, rid: str, model_id: str, **fields: Any) -> Job:
        """A job with what every request's job carries (ids, times, key); `fields` say what it asks for."""
        now = time.time()
        return Job(
            request_id=rid,
            model=model_id,
            accepted_at=now,
            deadline=now + self.settings.request_timeout,
            client_request_id=getattr(req.context, "request_id", None),
            key_name=req.context.get("key_name"),
            **fields,
        )

    @staticmethod
    def clock(req: falcon.Request) -> GatewayClock:
        """The request's gateway clock, started by the metrics middleware (a fresh one without it)."""
        return getattr(req.context, "gateway", None) or GatewayClock()

    def submit(self, req: falcon.Request, jobs: Sequence[Job], clock: GatewayClock) -> tuple[list[Flight], QueueWait]:
        """Admit every job or none (a refusal midway lets go of those already admitted, and the 429 carries
        the key's headers); the flights in order, and the request's queue clock."""
        socket, key = req.env.get("gunicorn.socket"), req.context.get("api_key")
        flights: list[Flight] = []
        with self.metrics.counting_rejections():
            try:
                for job in jobs:
                    # the worker's spans join this request's trace (a no-op when tracing is off)
                    flights.append(self.gateway.submit(tracing.stamp(job), socket, key))
            except BaseException:
                for flight in flights:
                    self.gateway.release(flight, finished=False)
                raise
        clock.enqueued()
        admitted = flights[-1].admitted
        req.context.quota = admitted.quota if admitted is not None else None  # x-ratelimit-* (ratelimit.py)
        wait = req.context.queue_wait = QueueWait(jobs[0].accepted_at)  # x-queue-wait-ms (queue_wait.py)
        return flights, wait

    def submit_one(self, req: falcon.Request, job: Job, clock: GatewayClock) -> tuple[Flight, QueueWait]:
        flights, wait = self.submit(req, (job,), clock)
        return flights[0], wait

    def answer(
        self, resp: falcon.Response, flight: Flight, answer: Answer, clock: GatewayClock, wait: QueueWait
    ) -> None:
        """Reply with one JSON body."""
        resp.media = self.collect(flight, answer, clock, wait)
        self.metrics.gateway_overhead(flight.job.model, clock.seconds())

    def stream(
        self, resp: falcon.Response, flight: Flight, chunks: Chunks, clock: GatewayClock, wait: QueueWait
    ) -> None:
        """Reply with an event stream, or raise the HTTP error that answers instead of it."""
        respond_with(resp, self.open_stream(flight, chunks, clock, wait))

    def release(self, flight: Flight, *, finished: bool) -> None:
        """Give back what the request holds; an unfinished one is cancelled (and counted as a disconnect
        unless its deadline had passed)."""
        if not finished:
            self.metrics.cancelled(flight.job.model, flight.job.deadline)
        self.gateway.release(flight, finished=finished)

    def collect(self, flight: Flight, answer: Answer, clock: GatewayClock, wait: QueueWait | None = None) -> dict:
        """The same events as a stream, gathered into one body; a client that hangs up meanwhile cancels it
        (the lease keeper notices, see leases.py)."""
        job = flight.job
        first_token = True
        finished = False
        try:
            for item in self.gateway.events(flight, wait):
                event = item[1] if item is not None else None
                if isinstance(event, Delta | Embedded):
                    if first_token and isinstance(event, Delta):
                        first_token = False
                        self.metrics.first_token(job.model, time.time() - job.accepted_at)
                    answer.take(event)
                elif isinstance(event, Failed):
                    finished = True
                    clock.last_event()
                    raise failure(event)
                elif isinstance(event, Done):
                    clock.last_event()
                    if flight.gone:  # the worker stopped because the client hung up: nobody to answer
                        raise ClientGone("The client closed the connection.")
                    finished = True
                    usage = event.usage
                    self.metrics.finished(job.model, usage.completion_tokens, event.finish_reason, job.accepted_at)
                    return answer.body(event)
        finally:
            self.release(flight, finished=finished)
        raise from_status(500, "The job ended without a result.")

    def open_stream(
        self,
        flight: Flight,
        chunks: Chunks,
        clock: GatewayClock | None = None,
        wait: QueueWait | None = None,
        items: Iterator[Item] | None = None,
    ) -> Iterator[bytes]:
        """The stream's body, or the HTTP error that answers instead of it.

        OpenAI answers a streamed request whose error is known before the first token (context too long,
        model gone, worker lost) with that status. The reply commits to 200 at the first delta or at the
        first quiet tick (SSE_KEEPALIVE without an event, liveness checked): a job still queued then streams
        its place in the queue, and a first token is never held back. `items`: the job's events as the
        caller reads them (fanned-out choices tap them), else the gateway's.
        """
        if wait is not None:
            wait.report = True
        if items is None:
            items = self.gateway.events(flight, wait)
        try:
            head = read_head(items)
        except BaseException:
            self.release(flight, finished=False)
            raise
        last = head[-1] if head else None
        if last is not None and isinstance(last[1], Failed):
            self.release(flight, finished=True)
            raise failure(last[1])
        return self.relay(flight, chunks, itertools.chain(head, items), clock, wait)

    def relay(
        self,
        flight: Flight,
        chunks: Chunks,
        items: Iterable[Item],
        clock: GatewayClock | None = None,
        wait: QueueWait | None = None,
    ) -> Iterator[bytes]:
        """The committed stream: every event as `chunks` spell it, an error after the 200 as an error event.
        `clock`'s overhead goes to the histogram once the last chunk is written (headers left long before).
        While the job waits, quiet ticks say where it stands (`wait`); once it starts, a stream that has
        said so hears its final wait in one more comment."""
        job = flight.job
        finished = False
        first_token = True
        told_queued = False
        try:
            if opening := chunks.opening():
                yield opening
            try:
                for item in items:
                    if item is None:
                        if wait is not None and wait.report and wait.waiting:
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
                            first_token = False
                            self.metrics.first_token(job.model, time.time() - job.accepted_at)
                        chunk = chunks.delta(event, event_id)
                    elif isinstance(event, Done):
                        if clock is not None:
                            clock.last_event()
                        usage = event.usage
                        self.metrics.finished(job.model, usage.completion_tokens, event.finish_reason, job.accepted_at)
                        chunk = chunks.done(event, event_id)
                        finished = True
                    elif isinstance(event, Failed):
                        finished = True
                        error = {"message": event.message, "type": event.type, "param": event.param, "code": event.code}
                        chunk = chunks.error(error, event_id)
                    else:
                        continue
                    if chunk:
                        yield chunk
            except APIError as exc:
                yield chunks.error(exc.envelope()["error"])
            except redis.RedisError as exc:
                log.warning("stream %s lost Redis: %s", job.request_id, exc)
                lost = ServiceUnavailable("The queue (Redis) became unavailable; please retry.")
                yield chunks.error(lost.envelope()["error"])
            except Exception:
                log.exception("stream %s broke", job.request_id)
                yield chunks.error(InternalError("The server had an error while streaming.").envelope()["error"])
            if closing := chunks.closing():
                yield closing
            if clock is not None and clock.last_event_at is not None:
                self.metrics.gateway_overhead(job.model, clock.seconds())
        finally:
            self.release(flight, finished=finished)
