"""The queue's moving parts against a real Redis: registry, admission, enqueue, events, cancellation."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from services.api.pipeline.admission import Admission
from services.api.pipeline.gateway import Gateway
from services.api.pipeline.leases import Flight
from services.common import keys
from services.common.errors import ClientGone, GatewayTimeout, RateLimited, ServiceUnavailable
from services.common.events import Delta, Done, Failed, Started, Usage
from services.common.jobs import JOB_FUNCTION, Job, SamplingParams
from services.common.registry import Registry, WorkerRecord
from services.worker.publisher import CANCEL_POLL_S, StreamPublisher

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


def admit(adm: Admission, rid: str, *, lease_ttl: float = 30) -> None:
    adm.admit(rid, job(rid), queue_key=Queue(keys.queue_name("m"), connection=adm.redis).key, enqueue=[],
              lease_ttl=lease_ttl)  # fmt: skip


def test_admission_bounds_inflight_and_queue_depth(redis_client):
    adm = Admission(redis_client, max_inflight=2, max_queue_depth=3)
    admit(adm, "a")
    admit(adm, "b")
    with pytest.raises(RateLimited) as info:
        admit(adm, "c")
    assert info.value.code == "too_many_requests" and info.value.should_retry is True
    assert adm.inflight() == 2 and not redis_client.exists(keys.lease("c")), "a refused request takes nothing"
    redis_client.zrem(keys.inflight(), "a")
    admit(adm, "c")
    redis_client.rpush(Queue(keys.queue_name("m"), connection=redis_client).key, "x", "y", "z")
    redis_client.zrem(keys.inflight(), "b")
    with pytest.raises(RateLimited) as info:
        admit(adm, "d")
    assert info.value.status == 429 and info.value.headers["Retry-After"] and info.value.code == "queue_full"


def test_admission_entries_are_scored_by_lease_expiry(redis_client):
    adm = Admission(redis_client, max_inflight=1, max_queue_depth=10)
    admit(adm, "ghost", lease_ttl=0.3)
    score = redis_client.zscore(keys.inflight(), "ghost")
    assert time.time() < score <= time.time() + 0.3
    assert 0 < redis_client.pttl(keys.lease("ghost")) <= 300
    time.sleep(0.4)
    admit(adm, "next"), "a replica that stopped renewing frees its slot at its lease's expiry"


def count_round_trips(monkeypatch) -> list[bytes]:
    sent: list[bytes] = []
    send = redis.connection.Connection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(b"".join(command) if isinstance(command, list) else command)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    return sent


def test_submit_admits_leases_and_enqueues_in_one_round_trip(redis_client, monkeypatch):
    gw = gateway(redis_client)
    j = job("cmpl-q")
    gw.jobs.enqueue_commands(j)  # warm RQ's one-off server version read
    gw.admission._script.sha = redis_client.script_load(gw.admission._script.script)
    sent = count_round_trips(monkeypatch)
    flight = gw.submit(j)
    assert len(sent) == 1 and b"EVALSHA" in sent[0]
    monkeypatch.undo()
    assert redis_client.get(keys.lease("cmpl-q")) == b"1" and 0 < redis_client.pttl(keys.lease("cmpl-q")) <= 10_000
    queue = Queue(keys.queue_name("m"), connection=redis_client, serializer=JSONSerializer)
    assert queue.count == 1 and gw.queued("m") == 1
    rq_job = queue.jobs[0]
    assert rq_job.func_name == JOB_FUNCTION and rq_job.args[0] == j.to_wire() and rq_job.get_status() == "queued"
    assert Job.from_wire(rq_job.args[0]) == j
    sent = count_round_trips(monkeypatch)
    gw.release(flight, finished=False)
    assert len(sent) == 1, "release: one round trip"
    monkeypatch.undo()
    assert queue.count == 0, "a queued job is dropped when its client goes away"
    assert not redis_client.exists(keys.lease("cmpl-q"))
    assert redis_client.zscore(keys.inflight(), "cmpl-q") is None


def test_the_keeper_renews_leases_and_admission_entries_in_one_round(redis_client):
    gw = gateway(redis_client)
    gw.leases.ttl = 1.0
    flights = [gw.submit(job(f"cmpl-k{i}")) for i in range(3)]
    gw.leases.stop()  # renew by hand, not by the thread
    time.sleep(0.6)
    assert gw.leases.renew() == 3
    for f in flights:
        assert redis_client.pttl(keys.lease(f.rid)) > 900
        assert redis_client.zscore(keys.inflight(), f.rid) > time.time() + 0.9
    redis_client.delete(keys.lease("cmpl-k0"))
    redis_client.zrem(keys.inflight(), "cmpl-k0")
    gw.leases.renew()
    assert not redis_client.exists(keys.lease("cmpl-k0")), "a cancelled lease is not brought back"
    assert redis_client.zscore(keys.inflight(), "cmpl-k0") is None
    time.sleep(1.1)
    assert not any(redis_client.exists(keys.lease(f.rid)) for f in flights), "unrenewed, they lapse"
    assert Admission(redis_client, max_inflight=1, max_queue_depth=10).inflight() == 0


def test_the_keeper_thread_renews_while_the_request_is_held(redis_client):
    gw = gateway(redis_client)
    gw.leases.ttl, gw.leases.interval = 0.6, 0.2
    flight = gw.submit(job("cmpl-t"))
    time.sleep(1.5)
    assert redis_client.exists(keys.lease("cmpl-t")), "renewed every ttl/3"
    gw.release(flight, finished=True)
    assert not redis_client.exists(keys.lease("cmpl-t"))


def test_a_client_that_hangs_up_loses_its_lease(redis_client):
    gw = gateway(redis_client)
    ours, theirs = socket.socketpair()
    flight = gw.submit(job("cmpl-gone"), client=ours)
    gw.leases.stop()
    theirs.send(b"x")  # data waiting is not a hang-up
    gw.leases.renew()
    assert not flight.gone and redis_client.exists(keys.lease("cmpl-gone"))
    assert ours.recv(1) == b"x"
    theirs.close()
    gw.leases.renew()
    assert flight.gone and not redis_client.exists(keys.lease("cmpl-gone"))
    with pytest.raises(ClientGone):
        for _ in gw.events(flight):
            pass
    ours.close()


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
    got = [item[1] for item in gateway(redis_client).events(Flight(j.request_id, j)) if item is not None]
    assert [type(e).__name__ for e in got] == ["Started", "Delta", "Delta", "Delta", "Done"]
    assert "".join(e.text for e in got if isinstance(e, Delta)) == "abc"
    assert 0 < redis_client.ttl(keys.stream(j.request_id)) <= 60


def test_failed_event_ends_the_read(redis_client):
    Registry(redis_client, 5).beat(record())
    j = job()
    StreamPublisher(redis_client, j.request_id, 60, j.deadline).publish(Failed("nope", status=400))
    events = [i[1] for i in gateway(redis_client).events(Flight(j.request_id, j)) if i]
    assert isinstance(events[-1], Failed) and events[-1].status == 400


def test_deadline_is_504(redis_client):
    Registry(redis_client, 5).beat(record())
    with pytest.raises(GatewayTimeout):
        gw = gateway(redis_client)
        for _ in gw.events(gw.submit(job(timeout=0.5))):
            pass


def test_a_request_on_a_dead_worker_fails_instead_of_hanging(redis_client):
    reg = Registry(redis_client, ttl=1)
    reg.beat(record("w1"))
    j = job(timeout=30)
    StreamPublisher(redis_client, j.request_id, 60, j.deadline).publish(Started("w1", time.time()))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="stopped"):
        for _ in gateway(redis_client, ttl=1).events(Flight(j.request_id, j)):
            pass
    assert time.monotonic() - started < 5


def test_publisher_generates_only_while_the_lease_lives(redis_client):
    redis_client.set(keys.lease("r1"), 1)
    out = StreamPublisher(redis_client, "r1", 60, time.time() + 30)
    assert not out.cancelled()
    redis_client.delete(keys.lease("r1"))
    time.sleep(CANCEL_POLL_S + 0.01)
    assert out.cancelled()
    assert StreamPublisher(redis_client, "r2", 60, time.time() + 30).cancelled(), "no lease, nobody waits"
    redis_client.set(keys.lease("r3"), 1)
    assert StreamPublisher(redis_client, "r3", 60, time.time() - 1).cancelled(), "past the deadline"
