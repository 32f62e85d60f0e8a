"""The visible queue through the real app and Redis, with a fake worker whose timing the test controls:
the x-queue-wait-ms header on every answer after admission, the queue comments of a waiting stream (its
position from RQ's list, its estimate from recent service times and live slots), and the queue per key
in /v1/system/status, read from jobs RQ itself enqueued."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import falcon.testing
import pytest
from rq import Queue

from services.api.app import create_app
from services.api.observability import queue_view
from services.api.pipeline.jobqueue import JobQueue
from services.api.pipeline.queue_wait import HEADER
from services.common import keys
from services.common.catalog import Catalog
from services.common.events import Delta, Done, Failed, Started, Usage
from services.common.jobs import Job, SamplingParams
from services.common.redis_client import connect
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration
KEEPALIVE_S = 5.0  # far above the queue's 1 s tick: comments come from the tick, not the keep-alive


@pytest.fixture()
def stack(redis_client, redis_url) -> Iterator[tuple[falcon.testing.TestClient, str]]:
    settings = Settings(redis_url=redis_url, sse_keepalive=KEEPALIVE_S, request_timeout=20)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    client = connect(redis_url, longest_block=KEEPALIVE_S)
    # a model no real worker serves: the e2e suite's session-wide workers listen on the default model's queue
    model = next(m for m in catalog.models if m != catalog.default)
    record = WorkerRecord(
        id="w1", host="h", pid=1, engine="llama_cpp", device="cpu", models=(model,), slots=2, busy=0, started_at=0
    )
    registry = Registry(client, ttl=30)
    registry.beat(record)
    yield falcon.testing.TestClient(create_app(settings, client, catalog)), model
    registry.remove(record.id)  # or /v1/models of the e2e tests that share this Redis lists the model for 30 s
    client.close()


def take_last(redis_client, model: str, after_s: float, answer: Callable[[StreamPublisher], None]) -> threading.Thread:
    """Waits for the request's job (the last in the queue), lets it wait `after_s`, then answers it."""

    def work() -> None:
        queue = Queue(keys.queue_name(model), connection=redis_client)
        deadline = time.monotonic() + 5
        while not any(j.startswith("chatcmpl-") for j in queue.job_ids) and time.monotonic() < deadline:
            time.sleep(0.01)
        rid = queue.job_ids[-1]
        time.sleep(after_s)
        redis_client.lrem(queue.key, 0, rid)  # dequeued, as RQ's BLMOVE takes it off the list
        answer(StreamPublisher(redis_client, rid, 60, time.time() + 30))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def answer_hello(out: StreamPublisher) -> None:
    now = time.time()
    out.publish(Started("w1", now))
    out.publish(Delta("Hello", 1))
    out.publish(Done("stop", Usage(3, 1), {"dequeued": now, "done": now + 0.5}))


def post(client: falcon.testing.TestClient, model: str, *, stream: bool) -> falcon.testing.Result:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 8}
    return client.simulate_post("/v1/chat/completions", json=body)


def test_a_json_answer_says_how_long_it_waited(stack, redis_client):
    client, model = stack
    take_last(redis_client, model, 1.2, answer_hello)
    result = post(client, model, stream=False)
    assert result.status_code == 200 and result.json["choices"][0]["message"]["content"] == "Hello"
    assert 1200 <= int(result.headers[HEADER]) < 10_000
    # its service time (done - dequeued, the worker's clock) is now a sample for the next estimate
    assert [float(s) for s in redis_client.lrange(keys.service_times(model), 0, -1)] == [0.5]


def test_an_error_after_admission_says_how_long_it_waited(stack, redis_client):
    client, model = stack

    def fail(out: StreamPublisher) -> None:
        out.publish(Started("w1", time.time()))
        out.publish(Failed("too long", "invalid_request_error", "context_length_exceeded", "messages", 400))

    take_last(redis_client, model, 0.5, fail)
    result = post(client, model, stream=False)
    assert result.status_code == 400 and result.json["error"]["code"] == "context_length_exceeded"
    assert 500 <= int(result.headers[HEADER]) < 10_000
    # an error before admission (unknown model) was never queued: no header
    rejected = client.simulate_post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert rejected.status_code in (400, 404) and HEADER not in rejected.headers


def test_a_waiting_stream_hears_its_position_and_estimate_every_second(stack, redis_client):
    client, model = stack
    queue = Queue(keys.queue_name(model), connection=redis_client)
    redis_client.rpush(queue.key, "ahead-1", "ahead-2")  # two jobs ahead of ours
    redis_client.lpush(keys.service_times(model), "3.0", "1.0")  # mean 2 s, over 2 live slots
    take_last(redis_client, model, 3.5, answer_hello)
    result = post(client, model, stream=True)
    assert result.status_code == 200
    comments = re.findall(r"^: queued position=(\S+) eta_s=(\S+) waited_ms=(\d+)$", result.text, flags=re.M)
    assert 2 <= len(comments) <= 5, result.text  # about one a second over 3.5 s
    assert comments[0][:2] == ("3", "3.0"), "position 3 x 2 s / 2 slots"
    waited = [int(c[2]) for c in comments]
    assert waited == sorted(waited) and waited[0] >= 900
    final = re.search(r"^: started queue_wait_ms=(\d+)$", result.text, flags=re.M)
    assert final and int(final.group(1)) >= 3500 >= waited[-1]
    # the header left when the stream committed (the first tick): the wait so far, below the final one
    assert 900 <= int(result.headers[HEADER]) < int(final.group(1))
    assert '"content":"Hello"' in result.text and result.text.endswith("data: [DONE]\n\n")
    assert not re.search(r"^: (queued|started)[^\n]*\n\n", result.text, flags=re.M), "no blank line: no dispatch"


def test_a_stream_that_starts_at_once_has_no_queue_comment(stack, redis_client):
    client, model = stack
    take_last(redis_client, model, 0.0, answer_hello)
    result = post(client, model, stream=True)
    assert result.status_code == 200 and ": queued" not in result.text and ": started" not in result.text
    assert 0 <= int(result.headers[HEADER]) < 1000


def test_system_status_shows_the_queue_per_model_and_key(stack, redis_client, redis_url):
    client, model = stack
    jobs = JobQueue(redis_client, stream_ttl=60)
    now = time.time()
    for i, key in enumerate(["team-a", "team-a", "team-b", None, "team-a"]):
        job = Job(
            request_id=f"status-{i}", model=model, kind="completion", prompt="x",
            params=SamplingParams(max_tokens=4), accepted_at=now - 10 + i, deadline=now + 60, key_name=key,
        )  # fmt: skip
        pipe = redis_client.pipeline()
        jobs.enqueue(job, pipe)
        pipe.execute()
    status = client.simulate_get("/v1/system/status").json
    queue = status["models"][model]
    assert queue["queued"] == 5
    assert queue["queued_by_key"] == {"(no key)": 1, "team-a": 3, "team-b": 1}
    assert 9.5 <= queue["oldest_wait_s"] < 30
    assert status["queued_by_key"]["team-a"] == 3


def test_a_long_queue_is_read_up_to_its_walk(stack, redis_client, monkeypatch):
    client, model = stack
    monkeypatch.setattr(queue_view, "WALK", 3)
    redis_client.rpush(Queue(keys.queue_name(model), connection=redis_client).key, *[f"x{i}" for i in range(5)])
    queue = client.simulate_get("/v1/system/status").json["models"][model]
    assert queue["queued"] == 5 and queue["queued_by_key"] == {"(no key)": 3, "(not read)": 2}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_n_choices_say_their_queue_wait_too(stack, redis_client, stream: bool):
    """n=2 is two jobs: each waits 0.6 s more than the one before; the header says a choice's real wait."""
    client, model = stack

    def work() -> None:
        queue = Queue(keys.queue_name(model), connection=redis_client)
        deadline = time.monotonic() + 5
        while len(queue.job_ids) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        for rid in queue.job_ids:
            time.sleep(0.6)
            redis_client.lrem(queue.key, 0, rid)
            answer_hello(StreamPublisher(redis_client, rid, 60, time.time() + 30))

    threading.Thread(target=work, daemon=True).start()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 8, "stream": stream}
    result = client.simulate_post("/v1/chat/completions", json=body)
    assert result.status_code == 200, result.text
    waited = int(result.headers[HEADER])
    if stream:  # its headers leave with the first choice's first chunk
        assert 600 <= waited < 1200 and '"index":1' in result.text
    else:  # the answer needed both: the last one's wait
        assert 1200 <= waited < 5000 and len(result.json["choices"]) == 2
