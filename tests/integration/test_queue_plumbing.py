"""The queue's moving parts against a real Redis: registry, admission, enqueue, events, cancellation."""

from __future__ import annotations

import threading
import time

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from services.api.admission import Admission
from services.api.gateway import Gateway
from services.common import keys
from services.common.errors import GatewayTimeout, RateLimited, ServiceUnavailable
from services.common.events import Delta, Done, Failed, Started, Usage
from services.common.jobs import JOB_FUNCTION, Job, SamplingParams
from services.common.registry import Registry, WorkerRecord
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration


def record(wid: str = "w1", models=("m",), busy: int = 0) -> WorkerRecord:
    return WorkerRecord(
        id=wid,
        host="h",
        pid=1,
        engine="llama_cpp",
        device="cpu",
        models=models,
        slots=2,
        busy=busy,
        started_at=time.time(),
    )


def job(rid: str = "chatcmpl-x", timeout: float = 10) -> Job:
    now = time.time()
    return Job(
        request_id=rid,
        model="m",
        kind="completion",
        prompt="p",
        params=SamplingParams(max_tokens=4),
        accepted_at=now,
        deadline=now + timeout,
    )


def gateway(client, ttl: int = 2) -> Gateway:
    return Gateway(client, Registry(client, ttl), stream_ttl=60, keepalive=0.2, registry_cache_s=0)


def test_registry_lists_live_workers_and_forgets_dead_ones(redis_client):
    ours = {"w1", "w2"}  # workers of other test modules may be beating into the same Redis
    reg = Registry(redis_client, ttl=1)
    reg.beat(record("w1", ("m",)))
    reg.beat(record("w2", ("m", "n")))
    assert {m: sorted(w.id for w in ws) for m, ws in reg.serving().items() if m in "mn"} == {
        "m": ["w1", "w2"],
        "n": ["w2"],
    }
    reg.remove("w2")
    assert [w.id for w in reg.live() if w.id in ours] == ["w1"]
    time.sleep(1.3)
    assert [w for w in reg.live() if w.id in ours] == []
    assert not {m.decode() for m in redis_client.zrange(keys.workers_index(), 0, -1)} & ours


def test_require_worker_is_503_without_one(redis_client):
    gw = gateway(redis_client)
    with pytest.raises(ServiceUnavailable) as info:
        gw.require_worker("m")
    assert info.value.headers["Retry-After"]
    Registry(redis_client, 5).beat(record())
    gw.require_worker("m")


def test_admission_bounds_inflight_and_queue_depth(redis_client):
    adm = Admission(redis_client, max_inflight=2, max_queue_depth=3)
    deadline = time.time() + 30
    adm.admit("a", deadline, queued=0)
    adm.admit("b", deadline, queued=0)
    with pytest.raises(RateLimited):
        adm.admit("c", deadline, queued=0)
    assert adm.inflight() == 2
    adm.release("a")
    adm.admit("c", deadline, queued=0)
    with pytest.raises(RateLimited) as info:
        adm.admit("d", deadline, queued=3)
    assert info.value.status == 429 and info.value.headers["Retry-After"]


def test_admission_entries_of_a_crashed_replica_expire(redis_client):
    adm = Admission(redis_client, max_inflight=1, max_queue_depth=10)
    adm.admit("ghost", time.time() + 0.3, queued=0)
    time.sleep(0.4)
    adm.admit("next", time.time() + 30, queued=0)


def test_submit_puts_a_json_job_on_the_models_queue(redis_client):
    gw = gateway(redis_client)
    j = job("cmpl-q")
    gw.submit(j)
    assert 0 < redis_client.ttl(keys.lease("cmpl-q")) <= 16, "the lease lives until the deadline"
    queue = Queue(keys.queue_name("m"), connection=redis_client, serializer=JSONSerializer)
    assert queue.count == 1 and gw.queued("m") == 1
    rq_job = queue.jobs[0]
    assert rq_job.func_name == JOB_FUNCTION and rq_job.args[0] == j.to_wire()
    assert Job.from_wire(rq_job.args[0]) == j
    gw.cancel("cmpl-q")
    assert queue.count == 0, "a queued job is dropped when its client goes away"
    assert not redis_client.exists(keys.lease("cmpl-q"))


def test_events_flow_from_publisher_to_gateway(redis_client):
    Registry(redis_client, 5).beat(record())
    j = job()
    out = StreamPublisher(redis_client, j.request_id, ttl=60, deadline=j.deadline)

    def work() -> None:
        out.publish(Started("w1", time.time()))
        for word in ("a", "b", "c"):
            time.sleep(0.05)
            out.publish(Delta(word, 1))
        out.publish(Done("length", Usage(2, 3)))

    threading.Thread(target=work).start()
    got = [item[1] for item in gateway(redis_client).events(j) if item is not None]
    assert [type(e).__name__ for e in got] == ["Started", "Delta", "Delta", "Delta", "Done"]
    assert "".join(e.text for e in got if isinstance(e, Delta)) == "abc"
    assert 0 < redis_client.ttl(keys.stream(j.request_id)) <= 60


def test_failed_event_ends_the_read(redis_client):
    Registry(redis_client, 5).beat(record())
    j = job()
    StreamPublisher(redis_client, j.request_id, 60, j.deadline).publish(Failed("nope", status=400))
    events = [i[1] for i in gateway(redis_client).events(j) if i]
    assert isinstance(events[-1], Failed) and events[-1].status == 400


def test_deadline_is_504(redis_client):
    Registry(redis_client, 5).beat(record())
    with pytest.raises(GatewayTimeout):
        for _ in gateway(redis_client).events(job(timeout=0.5)):
            pass


def test_a_request_on_a_dead_worker_fails_instead_of_hanging(redis_client):
    reg = Registry(redis_client, ttl=1)
    reg.beat(record("w1"))
    j = job(timeout=30)
    StreamPublisher(redis_client, j.request_id, 60, j.deadline).publish(Started("w1", time.time()))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="stopped"):
        for _ in gateway(redis_client, ttl=1).events(j):
            pass
    assert time.monotonic() - started < 5


def test_publisher_generates_only_while_the_lease_lives(redis_client):
    redis_client.set(keys.lease("r1"), 1)
    out = StreamPublisher(redis_client, "r1", 60, time.time() + 30)
    assert not out.cancelled()
    redis_client.delete(keys.lease("r1"))
    time.sleep(0.06)
    assert out.cancelled()
    assert StreamPublisher(redis_client, "r2", 60, time.time() + 30).cancelled(), "no lease, nobody waits"
    redis_client.set(keys.lease("r3"), 1)
    assert StreamPublisher(redis_client, "r3", 60, time.time() - 1).cancelled(), "past the deadline"
