"""Recent traffic in Redis, summed across API processes, and the /status page that shows it with the fleet."""

from __future__ import annotations

import re
import time

import falcon.testing
import pytest

from services.api.app import create_app
from services.api.observability.traffic import SLICE_S, RecentTraffic, quantile
from services.api.routes.status_page import CSP, SCRIPT
from services.common.catalog import Catalog
from services.common.redis_client import connect
from services.common.registry import Registry, WorkerRecord
from services.common.settings import Settings

pytestmark = pytest.mark.integration


def test_quantile_interpolates_as_histogram_quantile() -> None:
    bounds = (0.1, 0.5, 1.0)
    assert quantile(0.5, {}, bounds) is None
    assert quantile(0.5, {0.1: 2}, bounds) == pytest.approx(0.05)
    assert quantile(0.5, {0.1: 1, 1.0: 1}, bounds) == pytest.approx(0.1)
    assert quantile(0.75, {0.1: 1, 1.0: 1}, bounds) == pytest.approx(0.75)
    assert quantile(0.99, {0.1: 1, float("inf"): 3}, bounds) == 1.0  # the open bucket: highest finite bound


def test_two_processes_add_to_one_summary(redis_client, redis_url) -> None:
    """Each process's counts reach Redis on a release's round trip (`ride`) or within FLUSH_S."""
    now = [1_000_000.0]
    a = RecentTraffic(connect(redis_url), clock=lambda: now[0])
    b = RecentTraffic(connect(redis_url), clock=lambda: now[0], flush_s=0.05)
    a.request("/v1/chat/completions", 200)
    b.request("/v1/completions", 503)
    b.request("/v1/system/status", 200)  # the page's own polls are not traffic
    a.first_token(0.3)
    b.first_token(0.7)
    pipe = redis_client.pipeline()
    a.ride(pipe)  # as a request's release carries them
    assert redis_client.hgetall(f"inference:traffic:{1_000_000}") == {}
    pipe.execute()
    assert redis_client.hget(f"inference:traffic:{1_000_000}", "requests") == b"1"
    deadline = time.monotonic() + 5
    while redis_client.hget(f"inference:traffic:{1_000_000}", "requests") != b"2":  # b's own thread
        assert time.monotonic() < deadline, "b's counts never reached Redis"
        time.sleep(0.01)
    now[0] += 2 * SLICE_S
    a.request("/v1/chat/completions", 200)
    a.first_token(30.0)

    got = a.summary()
    minute = got["last_minute"]
    assert (minute["requests"], minute["errors"], minute["ttft"]["count"]) == (3, 1, 3)
    assert minute["ttft"]["mean"] == pytest.approx(31.0 / 3)
    assert 0.25 < minute["ttft"]["p50"] <= 1.0 and 20 < minute["ttft"]["p95"] <= 40
    assert minute["seconds"] == pytest.approx(60 - SLICE_S)  # the current slice has just begun
    assert minute["requests_per_second"] == pytest.approx(3 / minute["seconds"])
    assert [s["requests"] for s in got["series"][-3:]] == [2, 0, 1]
    assert got["series"][-1]["start"] == 1_000_000 + 2 * SLICE_S
    ttl = redis_client.ttl(f"inference:traffic:{1_000_000}")
    assert 0 < ttl <= 360
    # five minutes on, the old slices are out of the window
    now[0] += 300
    assert a.summary()["window"]["requests"] == 0


def test_redis_down_records_nothing_and_raises_nothing() -> None:
    traffic = RecentTraffic(connect("redis://127.0.0.1:1/0"))
    traffic.request("/v1/completions", 200)
    traffic.first_token(0.1)
    traffic.flush()


def test_status_page_and_status_json(redis_client, redis_url) -> None:
    settings = Settings(redis_url=redis_url)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    client = connect(redis_url)
    record = WorkerRecord(
        id="w1", host="h", pid=1, engine="llama_server", device="cpu", models=(catalog.default,), slots=4, busy=1,
        started_at=0, state="serving", engine_pid=2,
    )  # fmt: skip
    Registry(client, ttl=5).beat(record)
    app = falcon.testing.TestClient(create_app(settings, client, catalog))

    page = app.simulate_get("/status")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "connect-src 'self'" in CSP
    assert SCRIPT in page.text and re.search(r"fetch\(\"/v1/system/status\"", page.text)

    app.simulate_post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
    status = app.simulate_get("/v1/system/status").json
    (worker,) = status["workers"]
    assert (worker["state"], worker["busy"], worker["free_slots"], worker["engine_pid"]) == ("serving", 1, 3, 2)
    assert status["models"][catalog.default]["queued"] == 0
    assert status["traffic"]["last_minute"]["requests"] == 1  # the 4xx above counts; the status polls do not
