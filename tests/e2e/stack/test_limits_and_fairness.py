"""Per-key limits, fair share and usage through nginx and two API replicas with a real llama-server worker
(one slot), as `make up` runs them: a limit that holds across both replicas, the 429 envelope and OpenAI's
x-ratelimit-* headers, usage that matches the tokens the answers reported, and the fairness measurement
(key A queues 40 requests, key B sends one: B's wait and queue position with and without FAIR_SHARE).

Figures (429 timings, fairness) are printed and written to run/tests/limits-figures.json.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis

from services.common import keys
from services.common.redis_client import tls_options
from services.keys import store
from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "temperature": 0}
"""Greedy counting: Gemma 270M keeps counting without end-of-sequence, so every request is as long as asked."""
FLOOD = 40
FLOOD_TOKENS = 16
"""Tokens per request of the fairness measurement: long enough that A's 40 queue up on one slot faster than
it drains them on a busy 2-core machine (at 8 they sometimes drained as fast as they arrived, and B found no queue)."""
FIGURES = RUN_DIR / "limits-figures.json"
KEYS = {
    "rpm4": {"rpm": 4},
    "tok": {"tpm": 200},
    "one": {"concurrency": 1},
    "acct": {},
    "team-a": {},
    "team-b": {},
    "routes": {"rpm": 50, "tpm": 100_000},
}
EMBEDDER = "all-minilm-l6-v2"


def record(name: str, value: object) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(value)}")


def start(label: str, **overrides: object) -> Iterator[tuple[NativeStack, dict[str, str]]]:
    run_dir = RUN_DIR / f"{label}-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = e2e_settings(run_dir, api_keys_file=run_dir / "api-keys.json", llama_server_parallel=1, **overrides)
    made = {name: store.create(settings.api_keys_file, name, **limits) for name, limits in KEYS.items()}
    made["ops"] = store.create(settings.api_keys_file, "ops", admin=True)
    with native_stack(settings) as running:
        yield running, made


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[tuple[NativeStack, dict[str, str]]]:
    yield from start("limits", embedding_model=EMBEDDER)  # /v1/embeddings is limited like the others


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def redis_of(running: NativeStack) -> redis.Redis:
    return redis.Redis.from_url(running.redis_url, **tls_options(running.settings))  # type: ignore[arg-type]


def complete(url: str, key: str, max_tokens: int = 1, timeout: float = 120, **extra: object) -> httpx.Response:
    body = {**COUNTING, "max_tokens": max_tokens, **extra}
    return httpx.post(f"{url}/v1/completions", json=body, headers=auth(key), timeout=timeout)


def test_a_request_limit_holds_across_both_replicas(stack) -> None:
    running, made = stack
    replicas = [running.replica_url(1), running.replica_url(2)]
    served = [complete(replicas[i % 2], made["rpm4"]) for i in range(4)]
    assert [r.status_code for r in served] == [200] * 4, [r.text for r in served]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in served] == ["3", "2", "1", "0"], "one shared count"
    assert {r.headers["x-ratelimit-limit-requests"] for r in served} == {"4"}
    assert "x-ratelimit-limit-tokens" not in served[0].headers, "no TPM limit on this key, no token headers"
    timings = []
    for i in range(20):
        started = time.perf_counter()
        refused = complete(replicas[i % 2], made["rpm4"])
        timings.append((time.perf_counter() - started) * 1000)
        assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"
    assert "requests per min (RPM): Limit 4" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and refused.headers["x-should-retry"] == "true"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    sdk = openai.OpenAI(base_url=f"{running.url}/v1", api_key=made["rpm4"], max_retries=0, timeout=30)
    with pytest.raises(openai.RateLimitError) as caught:  # through nginx, with the official client
        sdk.completions.create(model=MODEL, prompt="1,", max_tokens=1)
    assert caught.value.code == "rate_limit_exceeded"
    listed = httpx.get(f"{running.url}/v1/models", headers=auth(made["rpm4"]))
    assert listed.status_code == 200 and listed.headers["x-ratelimit-remaining-requests"] == "0", "every response"
    timings.sort()
    record("429_ms", {"n": 20, "median": round(statistics.median(timings), 1), "max": round(timings[-1], 1)})


def test_tokens_are_charged_then_settled_to_the_tokens_used(stack) -> None:
    running, made = stack
    first = complete(running.url, made["tok"], max_tokens=100)
    assert first.status_code == 200, first.text
    charged = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 80 <= charged < 100, "the estimate: prompt characters / 4 + max_tokens"
    usage = first.json()["usage"]
    after = httpx.get(f"{running.url}/v1/models", headers=auth(made["tok"]))
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == 200 - usage["total_tokens"], "settled to usage"
    too_many = complete(running.url, made["tok"], max_tokens=150)
    assert too_many.status_code == 429 and "tokens per min (TPM)" in too_many.json()["error"]["message"]
    assert int(too_many.headers["Retry-After"]) >= 1 and too_many.headers["x-ratelimit-limit-tokens"] == "200"
    never = complete(running.url, made["tok"], max_tokens=500)
    assert never.status_code == 429 and "too large" in never.json()["error"]["message"]
    body = {**COUNTING, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{running.url}/v1/completions", json=body, headers=auth(made["tok"]), timeout=60) as sse:
        assert sse.status_code == 200 and sse.headers["x-ratelimit-limit-tokens"] == "200", "streams carry them too"
        assert "data: [DONE]" in sse.read().decode()


def test_concurrent_requests_per_key(stack) -> None:
    running, made = stack
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(complete, running.url, made["one"], 120)
        redis_client = redis_of(running)
        deadline = time.monotonic() + 30
        while not redis_client.zcard(keys.key_inflight("one")) and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = complete(running.replica_url(2), made["one"])
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert long.result().status_code == 200
    assert complete(running.url, made["one"]).status_code == 200, "free again once the first one finished"


def test_every_route_is_limited_counted_once_and_says_so(stack) -> None:
    """Fanned-out choices (n > 1, a prompt list), /v1/responses and /v1/embeddings are admitted like a plain
    completion: the key's RPM takes each request once however many choices it has, every answer carries the
    key's x-ratelimit-* headers and x-queue-wait-ms, and the key's usage is what the answers reported
    (a prompt's tokens once for its n choices, as the merged usage counts them)."""
    running, made = stack
    headers = auth(made["routes"])
    models = lambda: httpx.get(f"{running.url}/v1/models", headers=headers).json()["data"]  # noqa: E731
    wait_until(lambda: any(m["id"] == EMBEDDER for m in models()), 120, "the embedding worker")
    calls = [
        ("/v1/completions", {**COUNTING, "max_tokens": 2, "n": 3}),
        ("/v1/completions", {**COUNTING, "prompt": ["1, 2,", "a, b, c,"], "max_tokens": 2, "n": 2}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Count: 1, 2,"}],
                                  "max_tokens": 2, "n": 2}),
        ("/v1/responses", {"model": MODEL, "input": "Count: 1, 2,", "max_output_tokens": 16}),
        ("/v1/embeddings", {"model": EMBEDDER, "input": ["one", "two words"]}),
    ]  # fmt: skip
    served = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    remaining = []
    for path, body in calls:
        reply = httpx.post(f"{running.url}{path}", json=body, headers=headers, timeout=120)
        assert reply.status_code == 200, (path, reply.text)
        assert reply.headers["x-ratelimit-limit-requests"] == "50" and "x-ratelimit-remaining-tokens" in reply.headers
        assert 0 <= int(reply.headers["x-queue-wait-ms"]) < 120_000, path
        remaining.append(int(reply.headers["x-ratelimit-remaining-requests"]))
        usage = reply.json()["usage"]
        served["requests"] += 1
        served["prompt_tokens"] += usage.get("prompt_tokens", usage.get("input_tokens"))
        served["completion_tokens"] += usage.get("completion_tokens", usage.get("output_tokens", 0))
    assert remaining == list(range(49, 49 - len(calls), -1)), f"one request each, whatever n: {remaining}"
    row = next(r for r in httpx.get(f"{running.url}/v1/usage", headers=auth(made["ops"])).json()["data"]
               if r["key"] == "routes")  # fmt: skip
    assert {k: row[k] for k in served} == served, row


def test_usage_per_key_matches_the_tokens_served(stack) -> None:
    running, made = stack
    served = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for i, url in enumerate([running.replica_url(1), running.replica_url(2), running.url]):
        reply = complete(url, made["acct"], max_tokens=3 + i)
        assert reply.status_code == 200
        served["requests"] += 1
        for field in ("prompt_tokens", "completion_tokens"):
            served[field] += reply.json()["usage"][field]
    sdk = openai.OpenAI(base_url=f"{running.url}/v1", api_key=made["acct"], max_retries=0, timeout=60)
    chunks = list(
        sdk.completions.create(
            model=MODEL, prompt="1, 2,", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    served["requests"] += 1
    served["prompt_tokens"] += chunks[-1].usage.prompt_tokens
    served["completion_tokens"] += chunks[-1].usage.completion_tokens
    assert httpx.get(f"{running.url}/v1/usage", headers=auth(made["acct"])).status_code == 403, "admin only"
    report = httpx.get(f"{running.url}/v1/usage", headers=auth(made["ops"])).json()
    row = next(r for r in report["data"] if r["key"] == "acct")
    assert {k: row[k] for k in served} == served, report
    assert row["total_tokens"] == served["prompt_tokens"] + served["completion_tokens"]
    bad = httpx.get(f"{running.url}/v1/usage", params={"date": "yesterday"}, headers=auth(made["ops"]))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "date"
    scraped = httpx.get(f"{running.replica_url(1)}/metrics").text  # loopback, as Prometheus scrapes
    assert f'api_key_prompt_tokens_total{{key="acct"}} {float(served["prompt_tokens"])}' in scraped
    assert f'api_key_requests_total{{key="acct"}} {float(served["requests"])}' in scraped
    assert not any(key in scraped for key in made.values()), "names only, never a key"


def measure_fairness(running: NativeStack, made: dict[str, str]) -> dict[str, object]:
    """A queues FLOOD requests on the one slot; when they wait, B sends one of the same size."""
    redis_client = redis_of(running)
    queue = f"rq:queue:{keys.queue_name(MODEL)}"
    finished_a: list[float] = []
    lock = threading.Lock()

    def a_request(_: int) -> int:
        reply = complete(running.url, made["team-a"], max_tokens=FLOOD_TOKENS, timeout=300)
        with lock:
            finished_a.append(time.monotonic())
        return reply.status_code

    began = time.monotonic()
    with ThreadPoolExecutor(FLOOD) as pool, ThreadPoolExecutor(1) as alone:
        flood = [pool.submit(a_request, i) for i in range(FLOOD)]
        deadline = time.monotonic() + 120
        # every A request admitted: waiting, running (one) or done
        while redis_client.llen(queue) + len(finished_a) + 1 < FLOOD and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = redis_client.llen(queue)
        assert waiting >= FLOOD // 2, f"A's flood drained as it came ({waiting} waiting): nothing to measure"
        sent = time.monotonic()
        b = alone.submit(complete, running.url, made["team-b"], FLOOD_TOKENS, 300)
        position = None
        while position is None and not b.done():  # however long a loaded machine takes to admit it
            owners = redis_client.hgetall(keys.fair(MODEL))
            ids = redis_client.lrange(queue, 0, -1)
            mine = [i for i, job in enumerate(ids) if owners.get(b"o:" + job) == b"team-b"]
            position = mine[0] if mine else None
        reply = b.result()
        done = time.monotonic()
        assert reply.status_code == 200 and all(f.result() == 200 for f in flood)
    return {
        "a_waiting_when_b_came": waiting,
        "b_queue_position": position,
        "b_wait_s": round(done - sent, 2),
        "b_queue_wait_ms": reply.headers.get("x-queue-wait-ms"),
        "a_finished_before_b": sum(1 for t in finished_a if sent < t < done),  # after B came, before B was done
        "slot_turnover_s": round((max(finished_a) - began) / FLOOD, 2),
    }


def test_fair_share_serves_one_request_between_anothers_flood(stack) -> None:
    running, made = stack
    figures = measure_fairness(running, made)
    record("fair_share_on", figures)
    assert figures["b_queue_position"] is not None and figures["b_queue_position"] <= 1, figures
    assert figures["a_finished_before_b"] <= 4, "B starts within about one slot turnover"


@pytest.fixture(scope="module")
def unfair_stack(gemma_path: object) -> Iterator[tuple[NativeStack, dict[str, str]]]:
    yield from start("unfair", fair_share=False)


def test_without_fair_share_the_request_waits_behind_the_flood(unfair_stack) -> None:
    running, made = unfair_stack
    figures = measure_fairness(running, made)
    record("fair_share_off", figures)
    waiting = figures["a_waiting_when_b_came"]
    assert figures["b_queue_position"] is not None and figures["b_queue_position"] >= waiting - 2, figures
    assert figures["a_finished_before_b"] >= waiting, figures
