"""API keys through the real app and Redis: 401/403 envelopes, admin routes, a new key live within a second."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import falcon.testing
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from services.api.app import create_app
from services.common import keys
from services.common.catalog import Catalog
from services.common.events import Done, Started, Usage
from services.common.jobs import Job
from services.common.redis_client import connect
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings
from services.keys import store
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration
OUTSIDE = "203.0.113.7"  # a client address nginx forwards; never loopback


class Stack:
    def __init__(self, client: falcon.testing.TestClient, path: Path, model: str, other: str, made: dict) -> None:
        self.client, self.path, self.model, self.other, self.keys = client, path, model, other, made

    def call(self, method: str, route: str, key: str | None = None, *, via_nginx: bool = True, **kwargs):
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if via_nginx:  # what nginx adds to every request it passes on, from loopback
            headers |= {"X-Real-IP": OUTSIDE, "X-Forwarded-For": OUTSIDE}
        return self.client.simulate_request(method, route, headers=headers, remote_addr="127.0.0.1", **kwargs)

    def chat(self, key: str | None, model: str | None = None, **kwargs):
        body = {"model": model or self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        return self.call("POST", "/v1/chat/completions", key, json=body, **kwargs)


@pytest.fixture()
def stack(redis_client, redis_url, tmp_path) -> Iterator[Stack]:
    path = tmp_path / "keys.json"
    settings = Settings(redis_url=redis_url, request_timeout=1, api_keys_file=path)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    client = connect(redis_url)
    # models no real worker serves: the e2e suite's workers listen on the default model's queue
    model = next(m for m in catalog.models if m != catalog.default)
    other = "a-model-of-another-team"
    made = {
        "user": store.create(path, "user"),
        "root": store.create(path, "root", admin=True),
        "dave": store.create(path, "dave", models=(other,)),
        "old": store.create(path, "old", expires=datetime.now(UTC) - timedelta(minutes=1)),
    }
    Registry(client, ttl=5).beat(
        WorkerRecord(
            id="w-auth", host="h", pid=1, engine="llama_cpp", device="cpu", models=(model,), slots=1, busy=0,
            started_at=0,
        )
    )  # fmt: skip
    yield Stack(falcon.testing.TestClient(create_app(settings, client, catalog)), path, model, other, made)
    Queue(keys.queue_name(model), connection=redis_client).empty()
    client.close()


def assert_invalid_key(result) -> None:
    assert result.status_code == 401
    assert result.headers["www-authenticate"] == "Bearer"
    assert result.json["error"]["type"] == "invalid_request_error"
    assert result.json["error"]["code"] == "invalid_api_key"


def test_missing_wrong_revoked_and_expired_keys_are_401(stack, caplog):
    caplog.set_level(logging.DEBUG)
    assert_invalid_key(stack.chat(None))
    assert_invalid_key(stack.chat("sk-" + "x" * 43))
    assert_invalid_key(stack.call("GET", "/v1/models", "Basic abc"))
    assert stack.call("GET", "/v1/nonexistent").status_code == 404  # decided on matched routes; they are public
    assert_invalid_key(stack.chat(stack.keys["old"]))
    assert "sk-" not in stack.chat(stack.keys["old"]).text
    assert "x" * 43 not in caplog.text and stack.keys["old"] not in caplog.text, "keys are never logged"


def test_a_key_added_to_the_file_works_within_a_second_and_a_revoked_one_stops(stack):
    assert_invalid_key(stack.call("GET", "/v1/models", "sk-none"))
    key = store.create(stack.path, "bob")
    deadline = time.monotonic() + 1.5
    while stack.call("GET", "/v1/models", key).status_code != 200:
        assert time.monotonic() < deadline, "the new key was not accepted within ~1 s"
        time.sleep(0.05)
    store.revoke(stack.path, "bob")
    time.sleep(1.1)
    assert_invalid_key(stack.call("GET", "/v1/models", key))


def test_a_valid_key_is_served_and_its_name_travels_in_the_job(stack, redis_client):
    seen: list[Job] = []

    def worker() -> None:  # takes the job off the queue as a worker would, and answers it
        queue = Queue(keys.queue_name(stack.model), connection=redis_client, serializer=JSONSerializer)
        deadline = time.monotonic() + 5
        while not queue.job_ids and time.monotonic() < deadline:
            time.sleep(0.01)
        job = Job.from_wire(queue.fetch_job(queue.job_ids[0]).args[0])
        seen.append(job)
        out = StreamPublisher(redis_client, job.request_id, 60, time.time() + 30)
        out.publish(Started("w-auth", time.time()))
        out.publish(Done("stop", Usage(1, 1)))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    result = stack.chat(stack.keys["user"])
    thread.join(5)
    assert result.status_code == 200, result.text
    assert [job.key_name for job in seen] == ["user"]


def test_a_model_outside_the_allowlist_is_403(stack):
    key = stack.keys["dave"]
    result = stack.chat(key)
    assert result.status_code == 403
    assert result.json["error"] == {
        "message": f"The key 'dave' may not use the model '{stack.model}'.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    assert stack.call("GET", f"/v1/models/{stack.model}", key).status_code == 403
    assert stack.model not in [m["id"] for m in stack.call("GET", "/v1/models", key).json["data"]]
    assert stack.model in [m["id"] for m in stack.call("GET", "/v1/models", stack.keys["user"]).json["data"]]


@pytest.mark.parametrize(
    ("method", "route"),
    [("GET", "/v1/system/status"), ("GET", "/metrics"), ("POST", "/v1/models/load"), ("POST", "/v1/models/unload")],
)
def test_admin_routes_need_an_admin_key_unless_read_directly_from_loopback(stack, method, route):
    user, admin = stack.keys["user"], stack.keys["root"]
    body = {"json": {"model": stack.model, "worker": "nobody"}} if method == "POST" else {}
    assert_invalid_key(stack.call(method, route, **body))
    refused = stack.call(method, route, user, **body)
    assert refused.status_code == 403 and refused.json["error"]["code"] == "permission_denied"
    allowed = {200, 400, 404}  # 400/404: the command names no live worker, so it was past authentication
    assert stack.call(method, route, admin, **body).status_code in allowed
    local = stack.call(method, route, via_nginx=False, **body)
    if method == "GET":  # a scraper on the replica's own port
        assert local.status_code == 200
    else:  # a load or unload changes the fleet: a key always, from anywhere
        assert_invalid_key(local)
        assert stack.call(method, route, user, via_nginx=False, **body).status_code == 403
    spoofed = stack.client.simulate_request(method, route, remote_addr=OUTSIDE, **body)
    assert_invalid_key(spoofed)


def test_health_and_the_status_page_stay_open(stack):
    assert stack.call("GET", "/health").status_code == 200
    assert stack.call("GET", "/status").status_code == 200
