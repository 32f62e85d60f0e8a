"""What key checks and per-key limits cost a request, on the fast path: the native stack (nginx, two API
replicas, Redis) with a worker whose engine answers instantly, so the gateway is all there is to time.

Three ways in, timed in alternating blocks so drift on a shared machine hits them alike: a stack without
keys; the same requests with a key that has no limits (authentication only); with a key that has RPM,
TPM and concurrency limits far above what the test sends (authentication, two limits charged, the token
charge settled at the end, the key's concurrency entry). Figures go to run/tests/limits-figures.json.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from services.keys import store
from tests.conftest import ROOT, RUN_DIR
from tests.e2e.stack.test_limits_and_fairness import record
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import stop, wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
ROUNDS, BLOCK = 6, 25


def instant_stack(label: str, keys: bool) -> Iterator[tuple[NativeStack, dict[str, str]]]:
    run_dir = RUN_DIR / f"{label}-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {"api_keys_file": run_dir / "api-keys.json"} if keys else {"api_keys_file": None}
    settings = e2e_settings(run_dir, **extra)
    made: dict[str, str] = {}
    if keys:
        made["plain"] = store.create(settings.api_keys_file, "plain")
        made["limited"] = store.create(
            settings.api_keys_file, "limited", rpm=1_000_000, tpm=1_000_000_000, concurrency=1000
        )
    with native_stack(settings, worker=False) as running:
        env = {
            k: v
            for k, v in running.stack.proc("api-1").env.items()
            if k not in ("PROMETHEUS_MULTIPROC_DIR", "API_REPLICA")
        }
        argv = [sys.executable, "-m", "bench.instant_worker", "--model", MODEL, "--slots", "4"]
        log = running.log("instant-worker").open("ab")
        worker = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(running.model_served, 60, "the instant worker", worker)
            time.sleep(running.settings.heartbeat_interval * 2)  # every replica's registry cache sees it
            yield running, made
        finally:
            stop(worker)
            log.close()


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[NativeStack, dict[str, str]]]:
    yield from instant_stack("overhead-keys", keys=True)


@pytest.fixture(scope="module")
def open_stack() -> Iterator[tuple[NativeStack, dict[str, str]]]:
    yield from instant_stack("overhead-open", keys=False)


def timed_block(client: httpx.Client, url: str, headers: dict[str, str]) -> list[float]:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
    out = []
    for _ in range(BLOCK):
        started = time.perf_counter()
        reply = client.post(f"{url}/v1/completions", json=body, headers=headers)
        out.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200, reply.text
    return out


def test_the_cost_of_keys_and_limits_per_request(keyed, open_stack) -> None:
    (with_keys, made), (without, _) = keyed, open_stack
    ways = {
        "no_keys": (without.url, {}),
        "key": (with_keys.url, {"Authorization": f"Bearer {made['plain']}"}),
        "key_and_limits": (with_keys.url, {"Authorization": f"Bearer {made['limited']}"}),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    with httpx.Client(timeout=30) as client:
        for url, headers in ways.values():  # warm every path
            timed_block(client, url, headers)
        for _ in range(ROUNDS):
            for name, (url, headers) in ways.items():
                times[name] += timed_block(client, url, headers)
    medians = {name: round(statistics.median(t), 2) for name, t in times.items()}
    limited = httpx.post(
        f"{with_keys.url}/v1/completions",
        json={"model": MODEL, "prompt": "hello", "max_tokens": 4},
        headers=ways["key_and_limits"][1],
    )
    assert limited.headers["x-ratelimit-limit-requests"] == "1000000", "the limits were in force"
    figures = {
        "n_per_way": ROUNDS * BLOCK,
        "median_ms": medians,
        "key_check_ms": round(medians["key"] - medians["no_keys"], 2),
        "limits_ms": round(medians["key_and_limits"] - medians["key"], 2),
    }
    record("overhead_per_request", figures)
    assert figures["limits_ms"] < 25 and figures["key_check_ms"] < 25, figures  # generous: a shared 2-core box
