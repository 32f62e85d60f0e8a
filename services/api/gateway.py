"""The API's side of the queue: enqueue a job on its model's RQ queue, read its events, cancel it.

Streaming and non-streaming both read the same events with XREAD BLOCK; `None` in the event
iterator is a quiet tick (no event for SSE_KEEPALIVE seconds) on which liveness is re-checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from services.common import events, keys
from services.common.errors import GatewayTimeout, ServiceUnavailable
from services.common.jobs import JOB_FUNCTION, Job
from services.common.registry import Registry

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        client: redis.Redis,
        registry: Registry,
        *,
        stream_ttl: int,
        keepalive: float,
        registry_cache_s: float = 1.0,
    ) -> None:
        self.redis = client
        self.registry = registry
        self.stream_ttl = stream_ttl
        self.keepalive = keepalive
        self._cache_s = registry_cache_s
        self._serving: dict[str, list] = {}
        self._serving_at = 0.0

    def queue(self, model_id: str) -> Queue:
        return Queue(keys.queue_name(model_id), connection=self.redis, serializer=JSONSerializer)

    def serving(self, fresh: bool = False) -> dict[str, list]:
        """model id -> live workers, cached for a second so a burst of requests costs one read."""
        now = time.monotonic()
        if fresh or now - self._serving_at > self._cache_s:
            self._serving = self.registry.serving()
            self._serving_at = now
        return self._serving

    def require_worker(self, model_id: str) -> None:
        if not self.serving().get(model_id) and not self.serving(fresh=True).get(model_id):
            raise ServiceUnavailable(
                f"No worker is serving the model '{model_id}' right now; retry shortly.",
                param="model",
                code="model_not_loaded",
            )

    def queued(self, model_id: str) -> int:
        return self.queue(model_id).count

    def submit(self, job: Job) -> None:
        """Take the lease, then enqueue: a worker never sees a job nobody waits for."""
        ttl = max(1, int(job.deadline - time.time()))
        self.redis.set(keys.lease(job.request_id), 1, ex=ttl + 5)
        self.queue(job.model).enqueue(
            JOB_FUNCTION,
            job.to_wire(),
            job_id=job.request_id,
            description=job.request_id,
            job_timeout=ttl + 30,
            ttl=ttl,
            result_ttl=0,
            failure_ttl=self.stream_ttl,
        )

    def events(self, job: Job) -> Iterator[tuple[str, events.Event] | None]:
        """(stream id, event) pairs until `done`/`error`; None on quiet ticks. Raises 504 at the deadline."""
        key = keys.stream(job.request_id)
        last = "0-0"
        worker: str | None = None
        while True:
            remaining = job.deadline - time.time()
            if remaining <= 0:
                raise GatewayTimeout(f"The request timed out after {job.deadline - job.accepted_at:.0f} seconds.")
            reply = self.redis.xread({key: last}, block=max(1, int(min(remaining, self.keepalive) * 1000)), count=256)
            if not reply:
                self._check_alive(job, worker)
                yield None
                continue
            for entry_id, fields in reply[0][1]:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                event = events.decode(fields)
                if isinstance(event, events.Started):
                    worker = event.worker
                yield last, event
                if isinstance(event, events.Done | events.Failed):
                    return

    def _check_alive(self, job: Job, worker: str | None) -> None:
        """A request must not hang on a worker that died: fail it once nobody can answer."""
        if worker is not None:
            if all(w.id != worker for w in self.registry.live()):
                raise ServiceUnavailable("The worker serving this request stopped; please retry.", code="worker_lost")
            return
        serving = self.serving(fresh=True).get(job.model, [])
        if not serving:
            raise ServiceUnavailable(
                f"No worker is serving the model '{job.model}' any more; please retry.", code="model_not_loaded"
            )

    def cancel(self, request_id: str) -> None:
        """Drop the lease (the worker stops between tokens) and the job if it is still queued."""
        try:
            self.redis.delete(keys.lease(request_id))
            try:
                rq_job = RQJob.fetch(request_id, connection=self.redis, serializer=JSONSerializer)
                if rq_job.get_status(refresh=False) == "queued":
                    rq_job.cancel()
            except NoSuchJobError:
                pass
        except redis.RedisError as exc:
            log.warning("could not cancel %s: %s", request_id, exc)

    def finish(self, request_id: str) -> None:
        """The client has everything: the stream and lease can go now rather than at their TTL."""
        try:
            self.redis.delete(keys.stream(request_id), keys.lease(request_id))
        except redis.RedisError as exc:
            log.warning("could not delete stream of %s: %s", request_id, exc)
