"""The queue gauges' reader against a real Redis and RQ's own enqueue: depth and the oldest job's age."""

from __future__ import annotations

import time

import pytest
import redis

from services.api.observability.state_metrics import QueueProbe
from services.api.pipeline.jobqueue import JobQueue
from tests.support.queued_jobs import completion_job as job

pytestmark = pytest.mark.integration


def test_depth_and_oldest_age_per_model(redis_client: redis.Redis) -> None:
    jobs = JobQueue(redis_client, stream_ttl=60)
    probe = QueueProbe(redis_client, lambda model: jobs.queue(model).key)
    models = ("probe-a", "probe-b", "probe-empty")
    for i in range(3):
        pipe = redis_client.pipeline()
        jobs.enqueue(job(f"probe-a-{i}", "probe-a"), pipe)
        pipe.execute()
        if i == 0:
            time.sleep(1.2)  # the first job is the old one
    pipe = redis_client.pipeline()
    jobs.enqueue(job("probe-b-0", "probe-b"), pipe)
    pipe.execute()

    got = probe(models)
    assert got["probe-a"].count == 3
    assert 1.1 <= got["probe-a"].oldest_age_s < 30, got
    assert got["probe-b"].count == 1 and 0 <= got["probe-b"].oldest_age_s < 1.0, got
    assert got["probe-empty"].count == 0 and got["probe-empty"].oldest_age_s == 0.0

    pipe = redis_client.pipeline()
    jobs.remove(job("probe-a-0", "probe-a"), pipe)  # the old one leaves: the age drops to the next job's
    pipe.execute()
    got = probe(models)
    assert got["probe-a"].count == 2 and got["probe-a"].oldest_age_s < 1.1, got
