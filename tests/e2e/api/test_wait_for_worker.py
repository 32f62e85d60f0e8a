"""WAIT_FOR_WORKER_S: a request for a catalog model that no worker serves waits in the queue for one (which is
what wakes a pool scaled to zero), is answered by the worker that starts, or ends in the 503 it always got.

Private Redis, gunicorn API and a real `python -m services.worker` on Gemma 3 270M (llama.cpp in-process) per
test: no worker of another test may serve the model here.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis

from services.common import keys
from tests.e2e.api.conftest import MODEL, serving, start_api, start_redis, start_worker
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
QUEUE = f"rq:queue:{keys.queue_name(MODEL)}"
ASK = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0}


def api_up(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=5).status_code in (200, 503)  # 503: up, no worker


def queued_ids(client: redis.Redis) -> list[str]:
    return [j.decode() for j in client.lrange(QUEUE, 0, -1)]


def test_without_the_wait_a_model_nobody_serves_is_503_at_once(private):
    port, data, env = private
    with start_redis(port, data):
        api_ctx, url = start_api(env | {"WAIT_FOR_WORKER_S": "0"}, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: api_up(url), 60, "api", api_proc)
            started = time.monotonic()
            r = httpx.post(f"{url}/v1/completions", json=ASK, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded", r.text
            assert r.headers["retry-after"] and time.monotonic() - started < 2
            assert not redis.Redis(port=port).exists(QUEUE), "nothing was queued"


def test_a_waiting_request_is_answered_by_the_worker_that_starts(private):
    port, data, env = private
    with start_redis(port, data):
        client = redis.Redis(port=port)
        api_ctx, url = start_api(env | {"WAIT_FOR_WORKER_S": "120"}, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: api_up(url), 60, "api", api_proc)
            unknown = httpx.post(f"{url}/v1/completions", json=ASK | {"model": "no-such-model"}, timeout=5)
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
            plain: dict = {}
            thread = threading.Thread(
                target=lambda: plain.update(r=httpx.post(f"{url}/v1/completions", json=ASK, timeout=180)), daemon=True
            )
            thread.start()
            with httpx.stream("POST", f"{url}/v1/completions", json=ASK | {"stream": True}, timeout=180) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()
                comments = []
                for line in lines:  # a quiet tick commits the stream; then it says where it stands
                    if line.startswith(": queued"):
                        comments.append(line)
                    if len(comments) >= 3:
                        break
                assert len(queued_ids(client)) == 2, "both wait in the model's queue, which KEDA watches"
                with start_worker(env, data / "worker.log", "late") as worker:
                    woke = time.monotonic()
                    rest = [ln for ln in lines if ln]
                    assert rest[-1] == "data: [DONE]", rest[-3:]
                    assert any(ln.startswith(": started queue_wait_ms=") for ln in rest), rest
                    assert sum(ln.startswith("data: {") for ln in rest) >= 2, "text chunks"
                    thread.join(60)
                    r = plain["r"]
                    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
                    assert int(r.headers["x-queue-wait-ms"]) >= 3000, "it waited for the worker to start"
                    print(f"answered {time.monotonic() - woke:.1f} s after the worker was started")
                    assert worker.poll() is None
            assert queued_ids(client) == []


def test_a_wait_that_runs_out_is_503_and_the_job_never_runs(private):
    port, data, env = private
    with start_redis(port, data):
        client = redis.Redis(port=port)
        api_ctx, url = start_api(env | {"WAIT_FOR_WORKER_S": "3"}, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: api_up(url), 60, "api", api_proc)
            seen: list[str] = []
            watcher = threading.Thread(
                target=lambda: wait_until(lambda: seen.extend(queued_ids(client)) or seen, 10, "queued"), daemon=True
            )
            watcher.start()
            started = time.monotonic()
            r = httpx.post(f"{url}/v1/completions", json=ASK, timeout=30)
            took = time.monotonic() - started
            watcher.join(1)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded", r.text
            assert r.headers["retry-after"] and 2.9 <= took < 5, f"ended after {took:.1f} s"
            assert r.headers["x-queue-wait-ms"], "it was queued"
            (job_id,) = set(seen)
            assert queued_ids(client) == [], "taken off the queue"
            assert not client.exists(keys.lease(job_id)), "its lease is dropped"
            assert client.hget(f"rq:job:{job_id}", "status") == b"queued", "no worker ever had it"
            # a worker that dequeued it just before it was dropped (put back here) finds no lease and skips it
            client.rpush(QUEUE, job_id)
            with start_worker(env, data / "worker.log", "afterwards") as worker:
                wait_until(lambda: serving(url), 120, "worker registered", worker)
                ok = httpx.post(f"{url}/v1/completions", json=ASK, timeout=60)
                assert ok.status_code == 200, ok.text
                log = (data / "worker.log").read_text()
                assert f"job {job_id} skipped" in log, log[-2000:]
                kinds = [fields[b"kind"] for _, fields in client.xrange(keys.stream(job_id))]
                assert kinds in ([], [b"started"]), f"it generated nothing: {kinds}"
