"""Redis round trips the API makes per completion request, besides reading events (XREAD): admission + lease
+ enqueue in one, release in one, which carries the status page's traffic counts too (a thread writes
those no release took, at most once a second). Before leases were renewed
and admission was one script, the same request made 7 (LLEN, admission MULTI, SET lease, RQ's enqueue
MULTI, ZREM, DEL stream+lease; 17 commands)."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from falcon import testing
from rq import Queue
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from services.api.app import create_app
from services.common import keys
from services.common.catalog import Catalog
from services.common.events import Delta, Done, Started, Usage
from services.common.jobs import Job, SamplingParams
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration
TRAFFIC = (b"HINCRBY", b"HINCRBYFLOAT")


class Counting(redis.Connection):
    """Records the first command of every round trip (a pipeline's first after MULTI)."""

    sent: list[tuple[bytes, ...]] = []

    def send_packed_command(self, command, check_health=True):
        raw = b"".join(command) if isinstance(command, list) else command
        words = tuple(w for w in raw.split(b"\r\n") if w and w[:1] not in b"*$")
        Counting.sent.append(words)
        return super().send_packed_command(command, check_health)


def fake_worker(client: redis.Redis, model: str, stop: threading.Event) -> None:
    """Answers each job with started, a few deltas and done, on its own (uncounted) connection."""
    while not stop.is_set():
        got = client.blpop("rq:queue:" + keys.queue_name(model), 1)
        if not got:
            continue
        job = Job.from_wire(RQJob.fetch(got[1].decode(), connection=client, serializer=JSONSerializer).args[0])
        out = StreamPublisher(client, job.request_id, 60, job.deadline)
        out.publish(Started("w1", time.time()))
        for _ in range(4):
            out.publish(Delta("x", 1))
        out.publish(Done("length", Usage(3, 4)))


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_costs_two_round_trips_besides_its_events(redis_client, redis_url, stream):
    settings = Settings(redis_url=redis_url)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    model = next(m for m in catalog.models if m != catalog.default)  # the e2e suite's workers serve the default
    record = WorkerRecord(id="w1", host="h", pid=1, engine="x", device="cpu", models=(model,), slots=8, busy=0,
                          started_at=time.time())  # fmt: skip
    Registry(redis_client, 60).beat(record)
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=Counting)
    api = testing.TestClient(create_app(settings, redis.Redis(connection_pool=pool), catalog))
    stop = threading.Event()
    worker = threading.Thread(target=fake_worker, args=(redis.Redis.from_url(redis_url), model, stop), daemon=True)
    worker.start()
    body = {"model": model, "prompt": "hi", "max_tokens": 4, "stream": stream}
    try:
        assert api.simulate_post("/v1/completions", json=body).status_code == 200  # warm: script, caches
        Counting.sent.clear()
        for _ in range(5):
            assert api.simulate_post("/v1/completions", json=body).status_code == 200
    finally:
        stop.set()
        worker.join(5)
    ours = [w for w in Counting.sent if w[0] != b"XREAD" and w[0] not in TRAFFIC]  # the thread's own flush
    assert [w[0] for w in ours] == [b"EVALSHA", b"ZREM"] * 5, [w[:2] for w in ours]


def _job_round_trips(cls, client: redis.Redis) -> int:
    """Round trips one more job costs a worker of `cls`: work(max_jobs=2) against work(max_jobs=1)."""
    from services.worker.slots import DEQUEUE_TIMEOUT

    counts = []
    for jobs in (1, 2):
        queue = Queue(f"trips-{cls.__name__}-{jobs}", connection=client, serializer=JSONSerializer)
        for _ in range(jobs):
            queue.enqueue("builtins.len", "abc", result_ttl=0)
        worker = cls([queue], connection=client, serializer=JSONSerializer, worker_ttl=DEQUEUE_TIMEOUT + 15)
        Counting.sent.clear()
        assert worker.work(max_jobs=jobs)  # birth, the dequeues, the jobs, death
        counts.append(len(Counting.sent))
    return counts[1] - counts[0]


def test_a_slot_runs_a_job_in_far_fewer_round_trips_than_rq(redis_url):
    """RQ's SimpleWorker spends 19 round trips on a job here (24 in the stack, where it reads the job's
    status and executions to clean up); a slot spends the dequeue, the fetch, one MULTI to start the job,
    one to finish it, and RQ's suspension check at most once a second."""
    from rq import SimpleWorker

    from services.worker.slots import SlotWorker

    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=Counting))
    rq_alone, slot = _job_round_trips(SimpleWorker, client), _job_round_trips(SlotWorker, client)
    print(f"round trips per job: RQ's SimpleWorker {rq_alone}, a slot {slot}")
    assert slot <= 5, slot
    assert rq_alone >= 3 * slot, (rq_alone, slot)


def test_a_suspended_slot_takes_no_job_and_a_busy_one_reads_the_flag_once_a_second(redis_url):
    """`rq suspend` still holds slots back; between back-to-back jobs the flag is read at most every
    SUSPENSION_CHECK_S, not before each dequeue as RQ does."""
    from rq.suspension import resume, suspend

    from services.worker.slots import DEQUEUE_TIMEOUT, SUSPENSION_CHECK_S, SlotWorker

    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=Counting))
    queue = Queue("suspension-check", connection=client, serializer=JSONSerializer)
    for _ in range(3):
        queue.enqueue("builtins.len", "abc", result_ttl=0)
    suspend(client)
    try:
        worker = SlotWorker([queue], connection=client, serializer=JSONSerializer, worker_ttl=DEQUEUE_TIMEOUT + 15)
        worker.work(burst=True)  # a suspended worker in burst mode stops at once
        assert queue.count == 3, "a suspended slot dequeued a job"
    finally:
        resume(client)
    worker = SlotWorker([queue], connection=client, serializer=JSONSerializer, worker_ttl=DEQUEUE_TIMEOUT + 15)
    Counting.sent.clear()
    started = time.monotonic()
    assert worker.work(max_jobs=3)  # a slot's dequeue waits for jobs even in burst mode: stop after three
    assert queue.count == 0
    reads = [w for w in Counting.sent if b"rq:suspended" in w]
    assert len(reads) <= 1 + (time.monotonic() - started) / SUSPENSION_CHECK_S, reads


@pytest.mark.parametrize("kind", ["SimpleWorker", "SlotWorker"])
def test_a_slot_leaves_rq_s_keys_as_rq_does(redis_client, kind):
    """A finished job leaves nothing (result_ttl=0): no hash, execution or registry entry, the worker idle
    with its count; a job that raises is RQ's failed job, in the failed registry, as `rq info` shows it.
    RQ's own SimpleWorker passes the same checks."""
    import rq
    from rq.registry import FailedJobRegistry
    from rq.worker import WorkerStatus

    from services.worker import slots

    cls = {"SimpleWorker": rq.SimpleWorker, "SlotWorker": slots.SlotWorker}[kind]
    queue = Queue(f"slot-keys-{kind}", connection=redis_client, serializer=JSONSerializer)
    ok = queue.enqueue("builtins.len", "abc", result_ttl=0)
    bad = queue.enqueue("builtins.int", "not a number", result_ttl=0)
    worker = cls([queue], connection=redis_client, serializer=JSONSerializer, worker_ttl=slots.DEQUEUE_TIMEOUT + 15)
    assert worker.work(max_jobs=2)
    assert not redis_client.exists(ok.key, ok.execution_registry.key)
    assert not redis_client.keys(f"rq:execution:{ok.id}:*")
    assert queue.started_job_registry.get_job_ids() == []
    assert not redis_client.llen(queue.intermediate_queue_key)
    assert bad.get_status(refresh=True) == "failed"
    assert bad.id in FailedJobRegistry(queue=queue).get_job_ids()
    worker.refresh()
    assert (worker.successful_job_count, worker.failed_job_count) == (1, 1)
    assert worker.get_state() == WorkerStatus.IDLE


class StartingRunner:
    """Starts each job as JobRunner does (its `started` through StreamPublisher.start), then ends it."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def run(self, job: Job, prelude=None) -> None:
        out = StreamPublisher(self.client, job.request_id, 60, job.deadline)
        assert out.start(Started("w1", time.time()), prelude)
        out.publish(Done("stop", Usage(1, 0)))


def test_a_job_s_start_rides_on_its_started_event(redis_client, redis_url):
    """Our job function takes the slot's start bookkeeping into its `started` MULTI: RQ's status, worker
    and intermediate-list removal land with the event the API waits for, in one round trip."""
    from services.api.pipeline.jobqueue import JobQueue
    from services.worker import job as job_entry
    from services.worker.slots import DEQUEUE_TIMEOUT, SlotWorker

    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=Counting))
    now = time.time()
    job = Job(kind="completion", prompt="hi", request_id="cmpl-ride", model="m-ride", accepted_at=now,
              deadline=now + 60, params=SamplingParams(max_tokens=1))  # fmt: skip
    pipe = redis_client.pipeline()
    JobQueue(redis_client, stream_ttl=60).enqueue(job, pipe)
    pipe.set(keys.lease(job.request_id), 1, ex=60)
    pipe.execute()
    queue = Queue(keys.queue_name(job.model), connection=client, serializer=JSONSerializer)
    worker = SlotWorker([queue], connection=client, serializer=JSONSerializer, worker_ttl=DEQUEUE_TIMEOUT + 15)
    job_entry.bind(StartingRunner(client))
    Counting.sent.clear()
    assert worker.work(max_jobs=1)
    started = [w for w in Counting.sent if b"EVAL" in w and b"started" in w]  # the event's append (append.py)
    assert len(started) == 1 and b"LREM" in started[0] and b"started_at" in started[0], started
    assert [e[1][b"kind"] for e in redis_client.xrange(keys.stream(job.request_id))] == [b"started", b"done"]
    assert not redis_client.exists(f"rq:job:{job.request_id}")
    assert not redis_client.llen(queue.intermediate_queue_key)


def test_reading_the_registry_costs_two_round_trips(redis_url):
    """The API reads it on a request when its second-old cache is stale: prune and list in one round trip,
    then the records."""
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=Counting))
    registry = Registry(client, 60)
    registry.beat(WorkerRecord(id="w-trips", host="h", pid=1, engine="x", device="cpu", models=("m",), slots=1,
                               busy=0, started_at=time.time()))  # fmt: skip
    Counting.sent.clear()
    try:
        assert "w-trips" in [w.id for w in registry.live()]
    finally:
        registry.remove("w-trips")  # other tests on this Redis count the registry's workers
    assert [w[0] for w in Counting.sent if w[0] != b"DEL"] == [b"ZREMRANGEBYSCORE", b"MGET"], Counting.sent
