"""Leases under faults, with real processes: a non-streaming client that hangs up cancels its generation,
and a worker killed between dequeue and start gets its job retried on another worker.
Private Redis, llama.cpp worker (one slot) and API per test, LEASE_TTL=3."""

from __future__ import annotations

import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.e2e.api.conftest import COUNTING, serving, start_api, start_redis, start_worker
from tests.support.procs import running, wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
LONG = {"model": MODEL, **COUNTING, "max_tokens": 1500}
"""Minutes of generation on this machine: a request that ends in seconds was cancelled."""


def worker_busy(url: str) -> int:
    workers = httpx.get(f"{url}/v1/system/status", timeout=5).json()["workers"]
    return sum(w["busy"] for w in workers)


def inflight(url: str) -> int:
    return httpx.get(f"{url}/v1/system/status", timeout=5).json()["inflight"]


def test_a_non_streaming_client_that_hangs_up_cancels_its_generation(private):
    port, data, env = private
    with start_redis(port, data), start_worker(env, data / "worker.log", "hangup"):
        api_ctx, url = start_api(env, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: serving(url), 60, "worker registered", api_proc)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=4))
            gone = time.monotonic()  # httpx closed the connection: the client is gone
            wait_until(lambda: worker_busy(url) == 0 and inflight(url) == 0, 10, "generation cancelled", api_proc)
            took = time.monotonic() - gone
            assert "the client hung up" in (data / "api.log").read_text()
            r = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 3}, timeout=60)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, "the slot serves again"
            print(f"non-streaming hang-up: slot and admission free {took:.1f} s after the client left")


def test_a_worker_killed_between_dequeue_and_start_gets_its_job_retried(private):
    """A doomed worker (tests/support/doomed_worker.py) takes the job with RQ's dequeue, lets RQ mark it
    started, and SIGKILLs itself; the real worker's only slot is busy meanwhile, so the doomed one gets it."""
    port, data, env = private
    with start_redis(port, data), start_worker(env, data / "worker.log", "survivor"):
        api_ctx, url = start_api(env, data / "api.log")
        with api_ctx as api_proc:
            wait_until(lambda: serving(url), 60, "worker registered", api_proc)
            busy = httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}, timeout=60)
            lines = busy.__enter__().iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # the real slot is generating
            cmd = [sys.executable, "-m", "tests.support.doomed_worker", env["REDIS_URL"], MODEL, "doomed"]
            with running(cmd, log=data / "doomed.log", env=env, cwd=ROOT) as doomed:
                wait_until(lambda: "waiting for a job" in (data / "doomed.log").read_text(), 30, "doomed", doomed)
                answer: list[httpx.Response] = []
                request = threading.Thread(
                    target=lambda: answer.append(
                        httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 3}, timeout=60)
                    )
                )
                request.start()
                doomed.wait(30)
                assert "dying" in (data / "doomed.log").read_text()
                lost = time.monotonic()
                busy.__exit__(None, None, None)  # free the real slot for the retry
                request.join(60)
            (resp,) = answer
            took = time.monotonic() - lost
            assert resp.status_code == 200, resp.text
            assert resp.json()["usage"]["completion_tokens"] == 3
            log = (data / "api.log").read_text()
            assert "lost before it started" in log and "enqueued attempt 2" in log
            assert took < 15, "within the heartbeat TTL and a keep-alive tick, not the request timeout"
            print(f"job lost before start: answered {took:.1f} s after the worker died")
