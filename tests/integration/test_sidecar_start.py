"""A sidecar job's `started` is written once the sidecar has the request (runner + real Redis + a loopback
server that plays vLLM): the round trip runs while the prompt is read, not before it, and still before any
answer. A job whose client left by then is dropped there, and its upstream request closed. That the
request goes out first is tests/unit/test_sse_client.py's (`before_wait` while the sidecar holds its answer)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
import redis

from services.common import events, keys
from services.common.events import Delta, Done, Failed, Started
from services.common.jobs import Job, SamplingParams
from services.worker.engines.openai_http import OpenAIHTTPEngine
from services.worker.engines.sse_client import SSEClient
from services.worker.metrics import WorkerMetrics
from services.worker.runner import JobRunner
from tests.support.loopback_sidecar import END, LoopbackSidecar, start_event_stream, write_chunk

pytestmark = pytest.mark.integration

WORDS = [" a", " b", " c"]


def chunk(i: int, word: str) -> bytes:
    event = {
        "choices": [{"index": 0, "text": word, "finish_reason": "length" if i == len(WORDS) else None}],
        "usage": {"prompt_tokens": 4, "completion_tokens": i, "total_tokens": 4 + i},
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class Sidecar(LoopbackSidecar):
    """Answers once the request's `started` is in Redis (or after 2 s), as if the prompt took that long."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(Play)
        self.redis = client
        self.started_before_answer: list[bool] = []
        self.cut_short = threading.Event()
        """The client closed the stream before its end."""


class Play(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Sidecar

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        stream = keys.stream(body["prompt"])  # the test's prompt is its request id
        deadline = time.monotonic() + 2
        while not self.server.redis.exists(stream) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.server.started_before_answer.append(bool(self.server.redis.exists(stream)))
        start_event_stream(self)
        try:
            for i, word in enumerate(WORDS, 1):
                write_chunk(self.wfile, chunk(i, word))
                time.sleep(0.05)
            write_chunk(self.wfile, b"data: [DONE]\n\n")
            self.wfile.write(END)
        except OSError:
            self.server.cut_short.set()
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def sidecar(redis_client: redis.Redis) -> Iterator[Sidecar]:
    server = Sidecar(redis_client)
    with server.serving():
        yield server


def runner_for(sidecar: Sidecar, client: redis.Redis) -> JobRunner:
    engine = OpenAIHTTPEngine(sidecar.url, name="vllm", concurrency=2, context=100, timeout=5, upstream_model="m")
    engine._streams = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2)
    return JobRunner(engine, client, worker_id="w1", stream_ttl=60, metrics=WorkerMetrics("vllm"))


def job(request_id: str, max_tokens: int = len(WORDS)) -> Job:
    now = time.time()
    params = SamplingParams(max_tokens=max_tokens, max_tokens_explicit=True)
    return Job(request_id=request_id, model="m", kind="completion", prompt=request_id, params=params,
               accepted_at=now, deadline=now + 30)  # fmt: skip


def stream(client: redis.Redis, request_id: str) -> list[events.Event]:
    return [events.decode(f) for _, f in client.xrange(keys.stream(request_id))]


def test_started_is_written_while_the_sidecar_has_the_request(sidecar: Sidecar, redis_client: redis.Redis) -> None:
    runner = runner_for(sidecar, redis_client)
    redis_client.set(keys.lease("cmpl-early"), "1", ex=60)
    runner.run(job("cmpl-early"))
    assert sidecar.started_before_answer == [True]
    got = stream(redis_client, "cmpl-early")
    assert isinstance(got[0], Started) and isinstance(got[-1], Done)
    assert "".join(e.text for e in got if isinstance(e, Delta)) == "".join(WORDS)
    assert got[-1].usage.completion_tokens == len(WORDS)
    runner.flusher.close()


def test_a_job_nobody_waits_for_is_dropped_and_its_upstream_request_closed(
    sidecar: Sidecar, redis_client: redis.Redis
) -> None:
    runner = runner_for(sidecar, redis_client)  # no lease: the client has gone
    runner.run(job("cmpl-gone"))
    assert [type(e) for e in stream(redis_client, "cmpl-gone")] == [Started], "no token, no error: nobody reads"
    assert sidecar.cut_short.wait(5), "the sidecar's stream was closed under it"
    assert 0 < redis_client.ttl(keys.stream("cmpl-gone")) <= 60
    runner.flusher.close()


def test_a_job_that_fails_before_its_request_still_starts_first(sidecar: Sidecar, redis_client: redis.Redis) -> None:
    """An explicit max_tokens as large as the context is refused before any request: `started`, then the 400."""
    runner = runner_for(sidecar, redis_client)
    redis_client.set(keys.lease("cmpl-too-long"), "1", ex=60)
    runner.run(job("cmpl-too-long", max_tokens=100))
    got = stream(redis_client, "cmpl-too-long")
    assert [type(e) for e in got] == [Started, Failed]
    assert got[1].status == 400 and got[1].code == "context_length_exceeded"
    assert sidecar.started_before_answer == [], "no request went out"
    runner.flusher.close()
