"""The real nginx, from our template, in front of stand-in replicas: streaming, ids, limits, retries."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from services.stack import nginx_conf
from services.stack.layout import Layout
from tests.conftest import RUN_DIR
from tests.support.fake_upstream import CrashingReplica, FakeReplica, dead_address, serving
from tests.support.procs import free_port, running, wait_until, which

pytestmark = pytest.mark.integration
MAX_BYTES = 4096

NginxFactory = Callable[[list[str]], contextlib.AbstractContextManager[str]]


@pytest.fixture()
def nginx() -> NginxFactory:
    """Start a private nginx on a free port in front of the given upstream addresses; yields its URL."""
    binary = which("nginx")
    if binary is None:
        pytest.fail("nginx is not installed: run `make test`, which installs it")

    @contextlib.contextmanager
    def start(upstreams: list[str]) -> Iterator[str]:
        port = free_port()
        layout = Layout(RUN_DIR / f"nginx-{port}", RUN_DIR / f"nginx-{port}" / "logs")
        layout.create()
        settings = Settings(max_request_bytes=MAX_BYTES, request_timeout=30, nginx_read_timeout=40)
        values = nginx_conf.native_values(settings, layout, listen=f"127.0.0.1:{port}")
        values["NGINX_UPSTREAM_SERVERS"] = nginx_conf.upstream_servers(upstreams)
        layout.nginx_conf.write_text(nginx_conf.render(nginx_conf.TEMPLATE.read_text(), values))
        with running(nginx_conf.command(binary, layout), log=layout.log("nginx")) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/nginx/health").status_code == 200, 10, "nginx", proc)
            yield url

    return start


def _envelope(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    return body


def test_stream_is_not_buffered(nginx: NginxFactory) -> None:
    with serving(FakeReplica("a", chunks=5, gap=0.4)) as replica, nginx([replica.address]) as url:
        start = time.monotonic()
        arrivals = []
        with httpx.stream("POST", f"{url}/stream", content=b"{}", timeout=10) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic() - start)
        assert len(arrivals) == 5
        assert arrivals[0] < 0.3, arrivals  # the first event did not wait for the rest
        assert arrivals[-1] - arrivals[0] > 1.2, arrivals  # and the others came as they were made


def test_request_id_made_kept_and_passed_on(nginx: NginxFactory) -> None:
    with serving(FakeReplica("a")) as replica, nginx([replica.address]) as url:
        made = httpx.get(f"{url}/v1/models").headers["x-request-id"]
        kept = httpx.get(f"{url}/v1/models", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        odd = httpx.get(f"{url}/v1/models", headers={"X-Request-ID": "no spaces allowed"}).headers["x-request-id"]
        assert len(made) == 32 and kept == "abc-123" and odd != "no spaces allowed"
        assert [s["request_id"] for s in replica.seen] == [made, "abc-123", odd]


def test_too_large_body_is_a_json_413(nginx: NginxFactory) -> None:
    with serving(FakeReplica("a")) as replica, nginx([replica.address]) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", content=b"x" * (MAX_BYTES + 1))
        body = _envelope(resp, 413, "request_too_large")
        assert str(MAX_BYTES) in body["error"]["message"]
        assert resp.headers["x-request-id"]
        assert replica.seen == []


def test_no_live_replica_is_a_json_502(nginx: NginxFactory) -> None:
    with nginx([dead_address(), dead_address()]) as url:
        _envelope(httpx.post(f"{url}/v1/chat/completions", json={}), 502, "bad_gateway")
        _envelope(httpx.get(f"{url}/v1/models"), 502, "bad_gateway")


def test_refused_connection_is_retried_even_for_post(nginx: NginxFactory) -> None:
    with serving(FakeReplica("live")) as live, nginx([dead_address(), live.address]) as url:
        statuses = [httpx.post(f"{url}/v1/chat/completions", json={"n": i}).status_code for i in range(10)]
        assert statuses == [200] * 10
        assert len(live.seen) == 10


def test_post_that_reached_a_replica_is_never_sent_twice(nginx: NginxFactory) -> None:
    crashing = CrashingReplica()
    with serving(FakeReplica("live")) as live, nginx([crashing.address, live.address]) as url:
        results = {i: httpx.post(f"{url}/v1/chat/completions", json={"n": i}).status_code for i in range(6)}
        served = {json.loads(s["body"])["n"] for s in live.seen}
        failed = {i for i, status in results.items() if status != 200}
        assert crashing.requests >= 1 and failed, results  # one POST died with its replica...
        assert set(results.values()) == {200, 502}
        assert served.isdisjoint(failed)  # ...and was not run again elsewhere
        # a GET is safe to repeat, so it moves on to the live replica
        live.seen.clear()
        time.sleep(nginx_conf.FAIL_TIMEOUT_S + 0.5)  # let nginx try the crashing replica again
        assert all(httpx.get(f"{url}/v1/models").status_code == 200 for _ in range(4))
    crashing.close()


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    problems = nginx_conf.check(Settings())
    assert problems == []
    with pytest.raises(nginx_conf.NginxConfigError, match="NGINX_READ_TIMEOUT"):
        nginx_conf.read_timeout(Settings(request_timeout=400, nginx_read_timeout=300))
