"""`n > 1` and prompt lists: one job per choice on the model's queue, merged into one answer.

Each choice is an ordinary job (admitted, leased, cancelled like any other), so the engines' own
batching runs the choices side by side. Choices are indexed as OpenAI does: prompt by prompt, n each
(choice i*n+j is prompt i's j-th). Usage: completion tokens summed over the choices, prompt tokens
counted once per prompt (the prompt is read once however many choices it has, as OpenAI and vLLM
count). With a seed, choice j of a prompt samples with seed+j, so choices differ yet replay.

Streaming sends every chunk with its choice's index; choices follow one another (the later ones are
generated meanwhile and wait in their Redis streams), and one `[DONE]` ends the whole stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import falcon

from services.api.gateway import Gateway
from services.api.leases import Flight
from services.api.metrics import ApiMetrics
from services.api.overhead import GatewayClock
from services.api.sse import DONE_LINE, ChunkFormat, Item, read_head, sse, stream_events
from services.common.errors import InvalidRequest, RateLimited, from_status
from services.common.events import Delta, Done, Failed, Usage
from services.common.jobs import Job
from services.common.schemas import SEED_MAX, ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from services.api.completions import CompletionResource

Submit = Callable[[Job], Flight]
Collect = Callable[[Flight, ChunkFormat, GatewayClock], dict]


def wanted(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return body.n > 1 or (isinstance(body, CompletionRequest) and len(body.prompts()) > 1)


def choice_jobs(body: ChatCompletionRequest | CompletionRequest, job: Job, max_n: int) -> list[Job]:
    """One job per choice, in OpenAI's order; more than `max_n` choices is a 400 naming `n`."""
    prompts = body.prompts() if isinstance(body, CompletionRequest) else (None,)
    if body.n * len(prompts) > max_n:
        raise InvalidRequest(
            f"At most {max_n} choices per request (n={body.n} x {len(prompts)} prompts asked for "
            f"{body.n * len(prompts)}).",
            param="n",
        )
    jobs = []
    for prompt in prompts:
        for j in range(body.n):
            k = len(jobs)
            update: dict = {"request_id": job.request_id if k == 0 else f"{job.request_id}-c{k}"}
            if prompt is not None:
                update["prompt"] = prompt
            seed = job.params.seed
            if seed is not None and j:
                update["params"] = job.params.model_copy(
                    update={"seed": seed + j if seed + j <= SEED_MAX else seed - j}
                )
            jobs.append(job.model_copy(update=update))
    return jobs


def submit_all(jobs: list[Job], submit: Submit, gateway: Gateway) -> list[Flight]:
    """Admit every choice or none: a refusal midway lets go of those already admitted."""
    flights: list[Flight] = []
    try:
        for job in jobs:
            flights.append(submit(job))
    except BaseException:
        for flight in flights:
            gateway.release(flight, finished=False)
        raise
    return flights


def merged_usage(usages: list[Usage], n: int) -> Usage:
    """Completion tokens of every choice; prompt tokens once per prompt (its first choice's count)."""
    prompt = sum(u.prompt_tokens for u in usages[::n])
    return Usage(prompt, sum(u.completion_tokens for u in usages))


def collect(
    flights: list[Flight], n: int, fmt: ChunkFormat, clock: GatewayClock, one: Collect, gateway: Gateway
) -> dict:
    """Each choice aggregated as a single request would be (`one`), then merged into one body."""
    bodies: list[dict] = []
    try:
        for flight in flights:
            bodies.append(one(flight, fmt, clock))
    finally:
        for flight in flights[len(bodies) + 1 :]:  # after a failure: the choices nobody read yet
            gateway.release(flight, finished=False)
    merged = dict(bodies[0])
    merged["choices"] = [body["choices"][0] | {"index": k} for k, body in enumerate(bodies)]
    usages = [Usage(b["usage"]["prompt_tokens"], b["usage"]["completion_tokens"]) for b in bodies]
    merged["usage"] = merged_usage(usages, n).to_openai()
    return merged


@dataclasses.dataclass(frozen=True)
class IndexedFormat(ChunkFormat):
    """A choice's chunks: its index on every chunk, no usage chunk of its own (the merged one ends the stream)."""

    index: int = 0

    def _at(self, chunk: dict | None) -> dict | None:
        if chunk is not None:
            chunk["choices"][0]["index"] = self.index
        return chunk

    def opening(self) -> dict | None:
        return self._at(super().opening())

    def delta(self, text: str) -> dict:
        return self._at(super().delta(text))

    def rich(self, event: Delta, offset: int = 0) -> dict:
        return self._at(super().rich(event, offset))

    def closing(self, finish: str) -> dict:
        return self._at(super().closing(finish))


def stream(flights: list[Flight], n: int, fmt: ChunkFormat, gateway: Gateway, metrics: ApiMetrics) -> Iterator[bytes]:
    """The merged SSE body, or (decided by the first choice, before any byte) the HTTP error instead."""
    merge = MergedStream(flights, n, fmt, gateway, metrics)
    try:
        merge.first = merge.open_first()
    except BaseException:
        for flight in flights:
            gateway.release(flight, finished=False)  # a second release of the first one is a no-op
        raise
    return merge.chunks()


def iter_nothing() -> Generator[bytes]:
    yield from ()


class MergedStream:
    """The choices' streams one after another, each chunk with its index, one usage chunk and [DONE] at the end."""

    def __init__(self, flights: list[Flight], n: int, fmt: ChunkFormat, gateway: Gateway, metrics: ApiMetrics):
        self.flights, self.n, self.fmt, self.gateway, self.metrics = flights, n, fmt, gateway, metrics
        self.usages: list[Usage] = []
        self.first: Generator[bytes] = iter_nothing()
        self.handed = 0
        """Choices whose stream took over their release (stream_events releases in its finally)."""

    def _format(self, k: int) -> ChunkFormat:
        f = self.fmt
        return IndexedFormat(f.chat, f.rid, f.created, f.model, with_usage=False, index=k)

    def _tapped(self, flight: Flight) -> Iterator[Item]:
        for item in self.gateway.events(flight):
            if item is not None and isinstance(item[1], Done):
                self.usages.append(item[1].usage)
            yield item

    def open_first(self) -> Generator[bytes]:
        """As sse.open_stream: an error before the first token is the HTTP status."""
        items = self._tapped(self.flights[0])
        head = read_head(items)
        last = head[-1] if head else None
        if last is not None and isinstance(last[1], Failed):
            failed = last[1]
            raise from_status(failed.status, failed.message, code=failed.code, param=failed.param)
        self.handed = 1
        return stream_events(self.flights[0], self._format(0), itertools.chain(head, items), self.gateway, self.metrics)

    def chunks(self) -> Iterator[bytes]:
        try:
            for k, flight in enumerate(self.flights):
                if k:
                    self.handed = k + 1
                    body = stream_events(flight, self._format(k), self._tapped(flight), self.gateway, self.metrics)
                else:
                    body = self.first
                with contextlib.closing(body):  # a client gone mid-choice: that choice's stream lets go of it now
                    for chunk in body:
                        if chunk != DONE_LINE:
                            yield chunk
                if len(self.usages) <= k:  # this choice failed and said so: the rest will not come
                    break
            if self.fmt.with_usage and len(self.usages) == len(self.flights):
                yield sse(self.fmt.usage(Done("stop", merged_usage(self.usages, self.n))))
            yield DONE_LINE
        finally:
            for flight in self.flights[self.handed :]:
                self.gateway.release(flight, finished=False)


def serve(
    resource: CompletionResource,
    req: falcon.Request,
    resp: falcon.Response,
    body: ChatCompletionRequest | CompletionRequest,
    job: Job,
    clock: GatewayClock,
) -> None:
    """completions.CompletionResource's answer for a fanned-out request (`resource` gives its gateway,
    metrics, settings and single-choice `_collect`)."""
    gateway, metrics = resource.gateway, resource.metrics
    jobs = choice_jobs(body, job, resource.settings.max_n)

    def submit(one: Job) -> Flight:
        return gateway.submit(one, req.env.get("gunicorn.socket"), req.context.get("api_key"))

    try:
        flights = submit_all(jobs, submit, gateway)
    except RateLimited as exc:
        metrics.rejected(exc.code or "rate_limited")
        raise
    clock.enqueued()
    fmt = ChunkFormat(resource.chat, job.request_id, int(job.accepted_at), job.model, body.include_usage())
    if body.stream:
        resp.stream = stream(flights, body.n, fmt, gateway, metrics)
        resp.content_type = "text/event-stream; charset=utf-8"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        return
    resp.media = collect(flights, body.n, fmt, clock, resource._collect, gateway)
    metrics.gateway_overhead(job.model, clock.seconds())
