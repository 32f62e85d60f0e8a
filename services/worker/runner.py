"""Runs one job on an engine and turns what the engine yields into stream events.

Every job ends with exactly one `done` or `error` event, whatever happens, so no client waits forever.
Token deltas go through the flusher the slots share (services/worker/flusher.py), batched.
"""

from __future__ import annotations

import logging
import time

import redis

from services.common import tracing
from services.common.errors import APIError, InvalidRequest
from services.common.events import Done, Embedded, Failed, Started, Usage, pack_vector
from services.common.jobs import Job
from services.worker.append import Prelude
from services.worker.engines.base import Embedder, Engine, Finish, GenerationRequest, TokenChunk
from services.worker.flusher import DeltaFlusher
from services.worker.metrics import WorkerMetrics
from services.worker.publisher import NotWanted, StreamPublisher

log = logging.getLogger(__name__)


class JobRunner:
    """Shared by the slots of one model; `flusher` is best shared by the whole process (one pipeline for all)."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        *,
        worker_id: str,
        stream_ttl: int,
        metrics: WorkerMetrics,
        flusher: DeltaFlusher | None = None,
        traces: tracing.Tracing | None = None,
    ) -> None:
        self.engine = engine
        self.redis = client
        self.worker_id = worker_id
        self.stream_ttl = stream_ttl
        self.metrics = metrics
        self.flusher = flusher or DeltaFlusher(client)
        self.traces = traces or tracing.Tracing()

    def run(self, job: Job, prelude: Prelude | None = None) -> None:
        out = StreamPublisher(self.redis, job.request_id, self.stream_ttl, job.deadline, flusher=self.flusher)
        dequeued = time.time()
        started = Started(self.worker_id, dequeued)
        if job.kind != "embedding" and self.engine.calls_before_wait:
            ready = out.defer_start(started, prelude)  # written once the sidecar has the request
        else:
            ready = out.start(started, prelude)  # the lease is read in the same round trip
        if not ready:
            log.info("job %s skipped: cancelled or past its deadline before it started", job.request_id)
            return
        self.metrics.queue_time(job.model, dequeued - job.accepted_at)
        with self.traces.job(job, dequeued, self.engine.name, self.worker_id), self.metrics.running(job.model):
            try:
                (self._embed if job.kind == "embedding" else self._generate)(job, out, dequeued)
            except NotWanted:
                log.info("job %s skipped: cancelled as it started (its upstream request closed)", job.request_id)
            except APIError as exc:
                self.metrics.failed(job.model)
                out.publish(Failed(exc.message, exc.type, exc.code, exc.param, exc.status))
            except Exception as exc:
                log.exception("job %s failed", job.request_id)
                self.metrics.failed(job.model)
                out.publish(Failed(f"The engine failed: {type(exc).__name__}"))

    def _embed(self, job: Job, out: StreamPublisher, dequeued: float) -> None:
        """One call for all inputs (the engine batches them); the vectors as base64 float32, then `done`."""
        if not isinstance(self.engine, Embedder):
            raise InvalidRequest(f"The {self.engine.name} engine cannot embed text.", param="model")
        result = self.engine.embed(job.inputs)
        done = time.time()
        usage = Usage(result.prompt_tokens, 0)
        self.metrics.finished(job.model, usage, done - job.accepted_at, "stop")
        out.publish(Embedded(tuple(pack_vector(v) for v in result.vectors)))
        out.publish(Done("stop", usage, {"accepted": job.accepted_at, "dequeued": dequeued, "done": done}))

    def _generate(self, job: Job, out: StreamPublisher, dequeued: float) -> None:
        prompt = job.prompt
        if job.kind == "chat" and not self.engine.templates_chat:
            prompt = self.engine.apply_chat_template(job.messages)
        request = GenerationRequest(job.request_id, prompt, job.params, job.messages, before_wait=out.before_wait)
        first = last = None
        for item in self.engine.generate(request, out.cancelled):
            if isinstance(item, TokenChunk):
                now = time.time()
                if first is None:
                    first = now
                    tracing.event("first_token")
                    self.metrics.first_token(job.model, now - job.accepted_at)
                elif item.tokens:
                    self.metrics.inter_token(job.model, (now - last) / item.tokens)
                last = now
                out.delta(item.text, item.tokens, tool_calls=item.tool_calls, logprobs=item.logprobs)
            elif isinstance(item, Finish):
                done = time.time()
                usage = Usage(item.prompt_tokens, item.completion_tokens)
                reason = "abort" if out.seen_cancelled else item.reason  # engines stop as 'stop'; vLLM says abort
                tracing.annotate(
                    {
                        "gen_ai.response.finish_reasons": (reason,),
                        "gen_ai.usage.input_tokens": usage.prompt_tokens,
                        "gen_ai.usage.output_tokens": usage.completion_tokens,
                    }
                )
                self.metrics.finished(job.model, usage, done - job.accepted_at, reason)
                timings = {"accepted": job.accepted_at, "dequeued": dequeued, "done": done}
                if first is not None:
                    timings["first_token"] = first
                out.publish(Done(item.reason, usage, timings))
