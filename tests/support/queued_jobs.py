"""Jobs put on a model's RQ queue as the API enqueues them, for tests of what reads or takes them."""

from __future__ import annotations

import time

import redis

from services.api.pipeline.jobqueue import JobQueue
from services.common.jobs import Job, SamplingParams


def completion_job(rid: str, model: str) -> Job:
    now = time.time()
    return Job(
        request_id=rid,
        model=model,
        kind="completion",
        prompt="p",
        params=SamplingParams(max_tokens=4),
        accepted_at=now,
        deadline=now + 60,
    )


def enqueue(client: redis.Redis, rid: str, model: str) -> Job:
    """RQ's own enqueue, as JobQueue writes it."""
    job = completion_job(rid, model)
    pipe = client.pipeline()
    JobQueue(client, stream_ttl=60).enqueue(job, pipe)
    pipe.execute()
    return job
