"""A chunked request body (Transfer-Encoding: chunked, no Content-Length) sent straight to a replica, as
gunicorn runs it: read up to MAX_REQUEST_BYTES, 413 past it (issue 25: it was read as empty, a 400).

nginx buffers a chunked body into one with a length, so only a client that reaches a replica's own port
sends one as it is; this test is that client.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import httpx
import pytest

from services.common.ports import free_port
from tests.conftest import ROOT, RUN_DIR
from tests.support.procs import running, wait_until

pytestmark = pytest.mark.integration
LIMIT = 4096


@pytest.fixture(scope="module")
def replica(redis_url: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    env |= {"REDIS_URL": redis_url, "HOST": "127.0.0.1", "API_BASE_PORT": str(port), "WORKERS": "1",
            "API_THREADS": "4", "MAX_REQUEST_BYTES": str(LIMIT), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "gunicorn", "-c", "services/api/gunicorn_conf.py", "services.api.wsgi:create()"]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, log=RUN_DIR / f"chunked-{port}" / "api.log", env=env, cwd=ROOT) as proc:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 60, "api replica", proc)
        yield url


def chunks(data: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def post_chunked(url: str, body: bytes) -> httpx.Response:
    """httpx sends a body of unknown length (a generator) chunked, without Content-Length."""
    request = httpx.Request("POST", f"{url}/v1/completions", content=chunks(body),
                            headers={"Content-Type": "application/json"})  # fmt: skip
    assert request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in request.headers
    with httpx.Client(timeout=30) as client:
        return client.send(request)


def test_a_chunked_body_is_read(replica):
    body = json.dumps({"model": "no-such-model", "prompt": "p" * 1000}).encode()
    reply = post_chunked(replica, body)
    assert reply.status_code == 404, reply.text  # the body was parsed: it named a model that does not exist
    assert reply.json()["error"]["code"] == "model_not_found"


def test_a_chunked_body_past_the_limit_is_413(replica):
    body = json.dumps({"model": "no-such-model", "prompt": "p" * (LIMIT * 3)}).encode()
    reply = post_chunked(replica, body)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "request_too_large"


def test_a_body_with_a_length_is_read_as_before(replica):
    reply = httpx.post(f"{replica}/v1/completions", json={"model": "no-such-model", "prompt": "p"}, timeout=30)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
