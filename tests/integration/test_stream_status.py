"""A streamed request through the real app and Redis: an error before the first token is its HTTP status."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import falcon.testing
import pytest
from rq import Queue

from services.api.app import create_app
from services.common import keys
from services.common.catalog import Catalog
from services.common.events import Delta, Done, Failed, Started, Usage
from services.common.redis_client import connect
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration
KEEPALIVE_S = 0.3


@pytest.fixture()
def stack(redis_client, redis_url) -> Iterator[tuple[falcon.testing.TestClient, Registry, str]]:
    settings = Settings(redis_url=redis_url, sse_keepalive=KEEPALIVE_S, request_timeout=3)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    client = connect(redis_url, longest_block=KEEPALIVE_S)
    registry = Registry(client, ttl=5)
    # a model no real worker serves: the e2e suite's session-wide workers listen on the default model's queue
    model = next(m for m in catalog.models if m != catalog.default)
    registry.beat(worker_record(model))
    yield falcon.testing.TestClient(create_app(settings, client, catalog)), registry, model
    client.close()


def worker_record(model: str) -> WorkerRecord:
    return WorkerRecord(
        id="w1", host="h", pid=1, engine="llama_cpp", device="cpu", models=(model,), slots=1, busy=0, started_at=0
    )


def fake_worker(redis_client, model: str, answer: Callable[[StreamPublisher], None]) -> threading.Thread:
    """Waits for the job the request enqueued, then answers it with `answer`'s events."""

    def work() -> None:
        queue = Queue(keys.queue_name(model), connection=redis_client)
        deadline = time.monotonic() + 5
        while not queue.job_ids and time.monotonic() < deadline:
            time.sleep(0.01)
        rid = queue.job_ids[0]
        answer(StreamPublisher(redis_client, rid, 60, time.time() + 30))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def post(client: falcon.testing.TestClient, model: str) -> falcon.testing.Result:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10**6}
    return client.simulate_post("/v1/chat/completions", json=body)


def test_context_overflow_before_the_first_token_is_a_400(stack, redis_client):
    client, _, model = stack

    def answer(out: StreamPublisher) -> None:
        out.publish(Started("w1", time.time()))
        out.publish(Failed("too long", "invalid_request_error", "context_length_exceeded", "max_tokens", 400))

    fake_worker(redis_client, model, answer)
    result = post(client, model)
    assert result.status_code == 400 and result.headers["content-type"].startswith("application/json")
    assert result.json["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "context_length_exceeded",
    }
    assert not redis_client.keys(keys.stream("*")) and not redis_client.keys(keys.lease("*")), "nothing left behind"


def test_a_model_gone_while_queued_is_a_503_with_retry_after(stack, redis_client):
    client, registry, model = stack
    fake_worker(redis_client, model, lambda out: registry.remove("w1"))
    result = post(client, model)
    assert result.status_code == 503 and int(result.headers["retry-after"]) > 0
    assert result.json["error"]["code"] == "model_not_loaded"


def test_a_first_token_commits_to_200_and_streams_everything(stack, redis_client):
    client, _, model = stack

    def answer(out: StreamPublisher) -> None:
        out.publish(Started("w1", time.time()))
        out.publish(Delta("Hel", 1))
        out.publish(Delta("lo", 1))
        out.publish(Done("stop", Usage(3, 2)))

    fake_worker(redis_client, model, answer)
    result = post(client, model)
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/event-stream")
    assert '"content":"Hel"' in result.text and '"content":"lo"' in result.text
    assert result.text.endswith("data: [DONE]\n\n")


def test_still_queued_after_a_keepalive_commits_to_200_and_errors_in_the_stream(stack, redis_client):
    """Nobody takes the job: the reply commits at the first quiet tick, queue comments flow, then the 504."""
    client, _, model = stack
    result = post(client, model)
    assert result.status_code == 200
    assert ": queued position=1 " in result.text and '"type":"timeout"' in result.text
