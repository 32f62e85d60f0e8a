"""A job lost between dequeue and its `started` event is enqueued once more, never left to time out.

The loss is made by hand against a real Redis, exactly as a worker leaves it when it dies at that moment:
RQ's BLMOVE into the intermediate list, then (or not) RQ's own `prepare_for_execution` under a worker
name no live worker has. The e2e test in tests/e2e/api/test_lost_jobs.py kills a real process there.
"""

from __future__ import annotations

import threading
import time

import pytest
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from services.common import keys
from services.common.errors import ServiceUnavailable
from services.common.events import Done, Started, Usage
from services.common.jobs import Job
from services.common.registry import Registry
from services.worker.publisher import StreamPublisher
from tests.integration.test_queue_plumbing import gateway, job, record

pytestmark = pytest.mark.integration


def strand(client, gw, job_id: str, *, start_on: str | None) -> None:
    """What a worker that dies right after dequeue leaves behind (with `start_on`: after RQ marked it started)."""
    queue = gw.jobs.queue("m")
    assert client.lmove(queue.key, queue.intermediate_queue_key) == job_id.encode()
    if start_on is None:
        return
    rq_job = RQJob.fetch(job_id, connection=client, serializer=JSONSerializer)
    pipe = client.pipeline()
    rq_job.prepare_for_execution(start_on, pipe)
    Execution.create(rq_job, 60, pipe, worker_name=start_on)  # the entry in the started registry
    pipe.lrem(queue.intermediate_queue_key, 0, job_id)
    pipe.execute()


def serve_one(client, gw) -> threading.Thread:
    """A live worker's slot: takes the next job off the queue and answers it."""

    def work() -> None:
        _, job_id = client.blpop(gw.jobs.queue("m").key, 10)
        payload = RQJob.fetch(job_id.decode(), connection=client, serializer=JSONSerializer).args[0]
        j = Job.from_wire(payload)
        out = StreamPublisher(client, j.request_id, 60, j.deadline)
        assert not out.cancelled(), "the new attempt holds its own lease"
        out.publish(Started("w1", time.time()))
        out.publish(Done("stop", Usage(1, j.attempt)))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("start_on", ["dead-7.m.0.123", None], ids=["started-on-a-dead-worker", "dequeued-only"])
def test_a_job_lost_before_it_started_is_retried_once(redis_client, start_on):
    Registry(redis_client, 5).beat(record("w1"))
    gw = gateway(redis_client)
    flight = gw.submit(job("cmpl-lost", timeout=30))
    items = gw.events(flight)
    assert next(items) is None and next(items) is None, "queued and waiting: no retry"
    assert flight.job.attempt == 1
    strand(redis_client, gw, "cmpl-lost", start_on=start_on)
    started = time.monotonic()
    assert next(items) is None  # the tick that finds it lost (or the first of two for a dequeued-only job)
    if start_on is None:
        assert flight.job.attempt == 1, "one tick in the intermediate list may be a live worker mid-dequeue"
        assert next(items) is None
    assert flight.job.attempt == 2 and flight.job.request_id == "cmpl-lost-a2"
    assert not redis_client.exists(keys.lease("cmpl-lost")), "the lost attempt's lease is gone"
    assert StreamPublisher(redis_client, "cmpl-lost", 60, time.time() + 30).cancelled(), "a zombie stops"
    worker = serve_one(redis_client, gw)
    rest = [item[1] for item in items if item is not None]
    worker.join(5)
    assert [type(e).__name__ for e in rest] == ["Started", "Done"] and rest[-1].usage.completion_tokens == 2
    assert time.monotonic() - started < 3
    gw.release(flight, finished=True)
    assert not redis_client.exists(keys.lease("cmpl-lost-a2"), keys.stream("cmpl-lost-a2"))


def test_a_second_loss_is_503_worker_lost(redis_client):
    Registry(redis_client, 5).beat(record("w1"))
    gw = gateway(redis_client)
    flight = gw.submit(job("cmpl-twice", timeout=30))
    items = gw.events(flight)
    strand(redis_client, gw, "cmpl-twice", start_on="dead-7.m.0.1")
    assert next(items) is None and flight.job.attempt == 2
    strand(redis_client, gw, "cmpl-twice-a2", start_on="dead-8.m.0.1")
    with pytest.raises(ServiceUnavailable) as info:
        next(items)
    assert info.value.code == "worker_lost" and info.value.should_retry is True


def test_a_job_started_on_a_live_worker_is_left_alone(redis_client):
    Registry(redis_client, 5).beat(record("w1"))
    gw = gateway(redis_client)
    flight = gw.submit(job("cmpl-slow", timeout=30))
    items = gw.events(flight)
    strand(redis_client, gw, "cmpl-slow", start_on="w1.m.0.55")
    assert next(items) is None and next(items) is None
    assert flight.job.attempt == 1 and redis_client.exists(keys.lease("cmpl-slow"))


def test_events_already_on_their_way_are_not_a_loss(redis_client):
    """The job ran and its hash is gone (result_ttl=0) between our XREAD and our look: read on, never retry."""
    Registry(redis_client, 5).beat(record("w1"))
    gw = gateway(redis_client)
    flight = gw.submit(job("cmpl-fast", timeout=30))
    redis_client.delete(RQJob.key_for("cmpl-fast"))
    StreamPublisher(redis_client, "cmpl-fast", 60, time.time() + 30).publish(Started("w1", time.time()))
    assert not gw._lost(flight, seen=0)
    assert gw._lost(flight, seen=1) == "its RQ job is gone"
