"""RQ, used leanly from the API: one Queue object per model, enqueue commands folded into the caller's
round trip, and a job's whereabouts read in one round trip when its client has heard nothing for a while.

Operators keep `rq info` and RQ's dashboards: jobs are RQ jobs, enqueued by RQ's own code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from services.common import keys
from services.common.jobs import JOB_FUNCTION, Job

Command = tuple[object, ...]


GRACE_S = 30
"""Seconds RQ keeps a job's hash past the request's deadline."""


@dataclass(frozen=True)
class JobState:
    """Where RQ has a job, read atomically with the length of its event stream."""

    status: str | None
    """RQ's status (queued, started, failed, ...); None when the job hash is gone."""
    worker_name: str
    in_intermediate: bool
    """Dequeued (BLMOVE'd into RQ's intermediate list) but not yet marked started."""
    stream_len: int


class JobQueue:
    def __init__(self, client: redis.Redis, *, stream_ttl: int) -> None:
        self.redis = client
        self.stream_ttl = stream_ttl
        self._queues: dict[str, Queue] = {}

    def queue(self, model_id: str) -> Queue:
        """Cached: each new RQ Queue asks the server for its version before its first enqueue."""
        queue = self._queues.get(model_id)
        if queue is None:
            queue = Queue(keys.queue_name(model_id), connection=self.redis, serializer=JSONSerializer)
            self._queues[model_id] = queue
        return queue

    def queued(self, model_id: str) -> int:
        return self.queue(model_id).count

    def enqueue(self, job: Job, pipe: Pipeline) -> None:
        """Add RQ's enqueue of `job` to `pipe` (RQ switches it to MULTI, so call this before adding others)."""
        # RQ's ttl only collects the job's hash: the deadline is what ends a request, and a hash that expired
        # first would read as a lost job (retried, then 503) instead of the timeout it is.
        ttl = max(1, int(job.deadline - time.time())) + GRACE_S
        self.queue(job.model).enqueue(
            JOB_FUNCTION,
            job.to_wire(),
            job_id=job.request_id,
            description=job.request_id,
            job_timeout=ttl,
            ttl=ttl,
            result_ttl=0,
            failure_ttl=self.stream_ttl,
            pipeline=pipe,
        )

    def enqueue_commands(self, job: Job) -> list[Command]:
        """RQ's enqueue as plain commands, for a script that runs them only if the request is admitted."""
        self.queue(job.model).get_redis_server_version()  # RQ reads it once, outside the pipeline
        pipe = self.redis.pipeline(transaction=False)
        self.enqueue(job, pipe)
        return [args for args, _options in pipe.command_stack]

    def remove(self, job: Job, pipe: Pipeline) -> None:
        """Take a job that is still queued off its queue; a worker that already has it finds no lease."""
        pipe.lrem(self.queue(job.model).key, 0, job.request_id)

    def state(self, job: Job) -> JobState:
        queue = self.queue(job.model)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(RQJob.key_for(job.request_id), "status", "worker_name")
        pipe.lpos(queue.intermediate_queue_key, job.request_id)
        pipe.xlen(keys.stream(job.request_id))
        (status, worker), position, length = pipe.execute()
        return JobState(_text(status), _text(worker) or "", position is not None, int(length))


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
