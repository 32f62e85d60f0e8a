"""Workers batch token deltas (services/worker/flusher.py) against a real Redis: the first token goes at
once, later ones together, `done` after all of them, every write with its TTL, leases checked in the batch."""

from __future__ import annotations

import time

import pytest

from bench.instant_engine import InstantEngine
from services.common import events, keys
from services.common.events import Delta, Done, Failed, Started, Usage
from services.common.jobs import Job, SamplingParams
from services.worker.flusher import DeltaFlusher, FlushFailed
from services.worker.metrics import WorkerMetrics
from services.worker.publisher import StreamPublisher
from services.worker.runner import JobRunner

pytestmark = pytest.mark.integration

SLOW = 0.3
"""A flush interval no test step outlasts, so what is pending stays pending until a test flushes."""


def entries(client, request_id: str) -> list[events.Event]:
    return [events.decode(fields) for _, fields in client.xrange(keys.stream(request_id))]


def publisher(client, flusher: DeltaFlusher, request_id: str) -> StreamPublisher:
    client.set(keys.lease(request_id), "1", ex=60)
    return StreamPublisher(client, request_id, ttl=60, deadline=time.time() + 30, flusher=flusher)


def test_the_first_token_goes_at_once_later_ones_wait_for_the_flush(redis_client):
    flusher = DeltaFlusher(redis_client, interval=SLOW)
    out = publisher(redis_client, flusher, "cmpl-first")
    out.publish(Started("w1", time.time()))
    out.delta("Once", 1)
    assert entries(redis_client, "cmpl-first")[1:] == [Delta("Once", 1)]
    for word in (" upon", " a", " time"):
        out.delta(word, 1)
    assert len(entries(redis_client, "cmpl-first")) == 2, "later tokens wait for the flush"
    deadline = time.monotonic() + 5
    while len(entries(redis_client, "cmpl-first")) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert entries(redis_client, "cmpl-first")[2] == Delta(" upon a time", 3, (" upon", " a", " time"))
    flusher.close()


def test_done_goes_at_once_after_the_pending_deltas(redis_client):
    flusher = DeltaFlusher(redis_client, interval=SLOW)
    out = publisher(redis_client, flusher, "cmpl-done")
    out.delta("a", 1)
    out.delta("b", 2)
    out.delta("", 1)  # a chunk with tokens and no text (a held-back stop string) counts, but is no piece
    out.publish(Done("stop", Usage(3, 4)))
    assert entries(redis_client, "cmpl-done") == [Delta("a", 1), Delta("b", 3), Done("stop", Usage(3, 4))]
    flusher.close()


def test_one_pipeline_writes_every_slot_and_checks_every_lease(redis_client):
    flusher = DeltaFlusher(redis_client, interval=SLOW)
    outs = [publisher(redis_client, flusher, f"cmpl-slot{i}") for i in range(3)]
    for out in outs:
        out.delta("x", 1)  # first tokens: at once
    for out in outs:
        out.delta("y", 1)
        out.delta("z", 1)
    redis_client.delete(keys.lease("cmpl-slot1"))  # slot 1's client went away
    calls = redis_client.info("commandstats")["cmdstat_exists"]["calls"]
    flushes = flusher.flushes
    flusher.flush()
    assert flusher.flushes == flushes + 1
    for i in range(3):
        assert entries(redis_client, f"cmpl-slot{i}")[-1] == Delta("yz", 2, ("y", "z"))
    assert [out.cancelled() for out in outs] == [False, True, False]
    assert redis_client.info("commandstats")["cmdstat_exists"]["calls"] == calls + 3, "checked in the batch only"
    flusher.close()


def test_every_batched_write_carries_the_ttl_even_after_the_api_deleted_the_stream(redis_client):
    flusher = DeltaFlusher(redis_client, interval=SLOW)
    out = publisher(redis_client, flusher, "cmpl-late")
    out.delta("a", 1)
    out.delta("b", 1)
    redis_client.delete(keys.stream("cmpl-late"))  # the client left; a token was already pending
    flusher.flush()
    assert redis_client.xlen(keys.stream("cmpl-late")) == 1
    assert 0 < redis_client.ttl(keys.stream("cmpl-late")) <= 60
    redis_client.expire(keys.stream("cmpl-late"), 5)
    out.delta("c", 1)
    flusher.flush()
    assert redis_client.ttl(keys.stream("cmpl-late")) > 5
    flusher.close()


def test_lost_tokens_end_the_request_in_an_error_never_a_done(redis_client):
    flusher = DeltaFlusher(redis_client, interval=SLOW)
    out = publisher(redis_client, flusher, "cmpl-lost")
    out.delta("a", 1)
    out.delta("b", 1)
    redis_client.delete(keys.stream("cmpl-lost"))
    redis_client.set(keys.stream("cmpl-lost"), "not a stream")  # XADD fails inside the batch
    with pytest.raises(FlushFailed):
        flusher.flush()
    with pytest.raises(FlushFailed):
        out.delta("c", 1)
    with pytest.raises(FlushFailed):
        out.publish(Done("stop", Usage(1, 2)))
    redis_client.delete(keys.stream("cmpl-lost"))
    out.publish(Failed("lost", status=503))
    assert entries(redis_client, "cmpl-lost") == [Failed("lost", status=503)]
    flusher.close()


def test_a_64_token_request_takes_a_handful_of_writes(redis_client):
    """The instant engine yields 64 tokens at once: started, the first token, one batch, done."""
    runner = JobRunner(InstantEngine(), redis_client, worker_id="w1", stream_ttl=60, metrics=WorkerMetrics("instant"))
    now = time.time()
    job = Job(
        request_id="cmpl-64",
        model="m",
        kind="chat",
        messages=({"role": "user", "content": "hi"},),
        params=SamplingParams(max_tokens=64),
        accepted_at=now,
        deadline=now + 30,
    )
    redis_client.set(keys.lease(job.request_id), "1", ex=60)
    xadds = redis_client.info("commandstats")["cmdstat_xadd"]["calls"]
    runner.run(job)
    got = entries(redis_client, "cmpl-64")
    assert redis_client.info("commandstats")["cmdstat_xadd"]["calls"] - xadds == len(got) <= 6
    assert isinstance(got[0], Started) and isinstance(got[-1], Done)
    deltas = [e for e in got if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == " ok" * 64
    assert sum(d.tokens for d in deltas) == 64 == got[-1].usage.completion_tokens
    assert [p for d in deltas for p in d.chunks()] == [" ok"] * 64, "one piece per token for the SSE writer"
    runner.flusher.close()


def test_a_zero_interval_writes_every_delta_as_it_comes(redis_client):
    flusher = DeltaFlusher(redis_client, interval=0)
    out = publisher(redis_client, flusher, "cmpl-unbatched")
    for word in ("a", "b", "c"):
        out.delta(word, 1)
    assert entries(redis_client, "cmpl-unbatched") == [Delta("a", 1), Delta("b", 1), Delta("c", 1)]
    flusher.close()


def test_started_reads_the_lease_in_the_same_round_trip(redis_client):
    """`started` and the lease check are one command (append.py); a job whose client left is skipped."""
    flusher = DeltaFlusher(redis_client, interval=SLOW)
    out = publisher(redis_client, flusher, "cmpl-start")
    before = redis_client.info("commandstats")
    assert out.start(Started("w1", time.time()))
    after = redis_client.info("commandstats")
    assert after["cmdstat_eval"]["calls"] == before.get("cmdstat_eval", {"calls": 0})["calls"] + 1
    assert after.get("cmdstat_exec") == before.get("cmdstat_exec"), "no MULTI/EXEC around it"
    assert not out.cancelled() and isinstance(entries(redis_client, "cmpl-start")[0], Started)
    gone = StreamPublisher(redis_client, "cmpl-gone", ttl=60, deadline=time.time() + 30, flusher=flusher)
    assert not gone.start(Started("w1", time.time())), "no lease: nobody waits"
    assert 0 < redis_client.ttl(keys.stream("cmpl-gone")) <= 60, "its started expires on its own"
    late = publisher(redis_client, flusher, "cmpl-late-start")
    late.deadline = time.time() - 1
    assert not late.start(Started("w1", time.time())) and not entries(redis_client, "cmpl-late-start")
    flusher.close()


def test_the_hold_stretches_while_tokens_come_slowly_and_shrinks_when_they_pile_up(redis_client):
    flusher = DeltaFlusher(redis_client, interval=SLOW, max_hold=4 * SLOW)  # its thread stays asleep meanwhile
    out = publisher(redis_client, flusher, "cmpl-hold")
    out.delta("a", 1)  # the first token: at once
    for _ in range(4):  # one token a batch: thin, so the hold doubles up to its ceiling
        out.delta("b", 1)
        with flusher._write:
            flusher._adapt(flusher._flush(None))
    assert flusher.hold == 4 * SLOW
    for _ in range(3):  # twenty tokens a batch: thick, so it halves back to the interval
        for _ in range(20):
            out.delta("c", 1)
        with flusher._write:
            flusher._adapt(flusher._flush(None))
    assert flusher.hold == SLOW
    flusher.close()
