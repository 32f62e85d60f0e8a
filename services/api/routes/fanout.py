"""`n > 1` and prompt lists: one job per choice on the model's queue, merged into one answer.

Each choice is an ordinary job (admitted, leased, cancelled like any other), so the engines' own
batching runs the choices side by side. Choices are indexed as OpenAI does: prompt by prompt, n each
(choice i*n+j is prompt i's j-th). Usage: completion tokens summed over the choices, prompt tokens
counted once per prompt (the prompt is read once however many choices it has, as OpenAI and vLLM
count). The caller's key is charged the same way: one request for its RPM and usage, each prompt's
tokens once (`Job.choice`, `Job.prompt_counted`). With a seed, choice j of a prompt samples with
seed+j, so choices differ yet replay.

Streaming sends every chunk with its choice's index as it is generated (the choices interleave, as
OpenAI's do), then one usage chunk and one `[DONE]` for the whole stream.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterator

import falcon

from services.api.observability.overhead import GatewayClock
from services.api.pipeline.leases import Flight
from services.api.pipeline.queue_wait import QueueWait
from services.api.pipeline.serving import Item, Serving
from services.api.pipeline.sse import DONE_LINE, respond_with, sse
from services.api.routes.completion_shapes import ChunkFormat, CompletionAnswer, CompletionChunks
from services.common.errors import InvalidRequest
from services.common.events import Delta, Done, Usage
from services.common.jobs import Job
from services.common.schemas import SEED_MAX, ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

Collect = Callable[[Flight], dict]


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
            update: dict = {"request_id": job.request_id if k == 0 else f"{job.request_id}-c{k}", "choice": k}
            update["prompt_counted"] = j == 0
            if prompt is not None:
                update["prompt"] = prompt
            seed = job.params.seed
            if seed is not None and j:
                update["params"] = job.params.model_copy(
                    update={"seed": seed + j if seed + j <= SEED_MAX else seed - j}
                )
            jobs.append(job.model_copy(update=update))
    return jobs


def merged_usage(usages: list[Usage], n: int) -> Usage:
    """Completion tokens of every choice; prompt tokens once per prompt (its first choice's count)."""
    prompt = sum(u.prompt_tokens for u in usages[::n])
    return Usage(prompt, sum(u.completion_tokens for u in usages))


def collect(flights: list[Flight], n: int, one: Collect, serving: Serving) -> dict:
    """Each choice aggregated as a single request would be (`one`), then merged into one body."""
    bodies: list[dict] = []
    try:
        for flight in flights:
            bodies.append(one(flight))
    finally:
        for flight in flights[len(bodies) + 1 :]:  # after a failure: the choices nobody read yet
            serving.gateway.release(flight, finished=False)
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


def stream(
    flights: list[Flight], n: int, fmt: ChunkFormat, serving: Serving, wait: QueueWait | None = None
) -> Iterator[bytes]:
    """The merged SSE body, or (decided by the first choice, before any byte) the HTTP error instead."""
    merge = MergedStream(flights, n, fmt, serving)
    merge.wait = wait
    try:
        merge.first = merge.open_first()
    except BaseException:
        for flight in flights[1:]:  # the first one's was released by the pipeline
            serving.gateway.release(flight, finished=False)
        raise
    return merge.chunks()


def iter_nothing() -> Generator[bytes]:
    yield from ()


class MergedStream:
    """The choices' streams at once, each pumped by its own thread into one queue, so chunks interleave as
    they are generated (each with its index); one usage chunk and one [DONE] end the whole."""

    def __init__(self, flights: list[Flight], n: int, fmt: ChunkFormat, serving: Serving):
        self.flights, self.n, self.fmt, self.serving = flights, n, fmt, serving
        self.usages: dict[int, Usage] = {}
        self.first: Generator[bytes] = iter_nothing()
        self.handed = 0
        """Choices whose stream (or pump) took over their release."""
        self.wait: QueueWait | None = None
        """The first choice's queue clock, for x-queue-wait-ms (queue_wait.py)."""

    def _chunks(self, k: int) -> CompletionChunks:
        """A choice's chunks: its index on every chunk, no usage chunk and no [DONE] of its own."""
        f = self.fmt
        return CompletionChunks(IndexedFormat(f.chat, f.rid, f.created, f.model, with_usage=False, index=k), last=b"")

    def _tapped(self, flight: Flight, k: int) -> Iterator[Item]:
        for item in self.serving.gateway.events(flight, self.wait if k == 0 else None):
            if item is not None and isinstance(item[1], Done):
                self.usages[k] = item[1].usage
            yield item

    def open_first(self) -> Generator[bytes]:
        """As Serving.open_stream: an error before the first token is the HTTP status."""
        first = self.serving.open_stream(self.flights[0], self._chunks(0), items=self._tapped(self.flights[0], 0))
        self.handed = 1
        return first

    def _pump(self, k: int, body: Generator[bytes], out: queue.Queue, stop: threading.Event) -> None:
        """One choice's chunks into `out`, then (k, None); stops at the next chunk once `stop` is set (a
        quiet stream yields a keep-alive every tick, so that is soon). Its stream releases its job."""
        started = False
        try:
            for chunk in body:
                started = True
                out.put((k, chunk))
                if stop.is_set():
                    break
        except Exception:
            log.exception("choice %d of %s broke", k, self.fmt.rid)
        finally:
            body.close()
            if not started:  # a generator closed before it ran has no finally to run: release here
                self.serving.gateway.release(self.flights[k], finished=False)
            out.put((k, None))

    def chunks(self) -> Iterator[bytes]:
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        bodies = [self.first]
        bodies += [self.serving.relay(f, self._chunks(k), self._tapped(f, k)) for k, f in enumerate(self.flights) if k]
        try:
            for k, body in enumerate(bodies):
                threading.Thread(target=self._pump, args=(k, body, out, stop), name=f"choice-{k}", daemon=True).start()
                self.handed = k + 1
            running = len(bodies)
            while running:
                k, chunk = out.get()
                if chunk is None:
                    running -= 1
                    if k not in self.usages:  # this choice failed and said so: the others will not be answered
                        break
                else:
                    yield chunk
            if self.fmt.with_usage and len(self.usages) == len(self.flights):
                usages = [self.usages[k] for k in range(len(self.flights))]
                yield sse(self.fmt.usage(Done("stop", merged_usage(usages, self.n))))
            yield DONE_LINE
        finally:
            stop.set()
            for flight in self.flights[self.handed :]:  # never handed to a pump (a failure while starting them)
                self.serving.gateway.release(flight, finished=False)


def serve(
    req: falcon.Request,
    resp: falcon.Response,
    body: ChatCompletionRequest | CompletionRequest,
    job: Job,
    clock: GatewayClock,
    serving: Serving,
    max_n: int,
) -> None:
    """The answer to a fanned-out request: each choice a job of its own through the serving pipeline."""
    jobs = choice_jobs(body, job, max_n)
    flights, wait = serving.submit(req, jobs, clock)  # x-queue-wait-ms: a stream's first choice's
    fmt = ChunkFormat(job.kind == "chat", job.request_id, int(job.accepted_at), job.model, body.include_usage())
    if body.stream:
        respond_with(resp, stream(flights, body.n, fmt, serving, wait))
        return
    resp.media = collect(
        flights, body.n, lambda flight: serving.collect(flight, CompletionAnswer(fmt), clock, wait), serving
    )
    serving.metrics.gateway_overhead(job.model, clock.seconds())
