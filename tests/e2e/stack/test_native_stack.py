"""The native stack as `make up` runs it, through nginx, driven by the official `openai` client.

Real redis-server, two gunicorn API replicas, llama.cpp's llama-server with its worker on Gemma 3 270M
(the default engine of `make up`), nginx from our template and Prometheus, each on a free port in a
private run directory. Tests that kill a replica start it again, so the order of tests does not matter.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import redis

from services.common import keys
from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import stat_fields, wait_until

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    settings = e2e_settings(RUN_DIR / f"stack-{time.strftime('%H%M%S')}-{id(object()) % 10_000}")
    with native_stack(settings) as running:
        yield running


def client(base: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=300, **kwargs)


def access_log(stack: NativeStack) -> list[dict]:
    return [json.loads(line) for line in stack.log("nginx-access").read_text().splitlines() if line.strip()]


def json_lines(path) -> list[dict]:
    """A process's JSON log lines (services/common/logs.py); a line a library printed itself is skipped."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_one_request_id_from_nginx_to_the_worker_and_the_gateway_overhead(stack: NativeStack) -> None:
    rid = f"trace-{time.monotonic_ns()}"
    prompt = "Name three colours, secretly."
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
    started = time.perf_counter()
    reply = httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers={"X-Request-ID": rid}, timeout=120)
    total_ms = (time.perf_counter() - started) * 1000
    assert reply.status_code == 200 and reply.headers["x-request-id"] == rid
    overhead = float(reply.headers["x-gateway-overhead-ms"])
    assert 0 <= overhead < total_ms, (overhead, total_ms)

    def api_lines() -> list[dict]:
        return [line for n in (1, 2) for line in json_lines(stack.log(f"api-{n}")) if line["request_id"] == rid]

    def seen() -> bool:
        """Every process has logged it, the API's access line too (gunicorn writes it after the body left,
        so the client may read the answer first)."""
        accessed = any(line.get("http", {}).get("status") == 200 for line in api_lines())
        worker = [line for line in json_lines(stack.log("worker")) if line["request_id"] == rid]
        nginx = [e for e in access_log(stack) if e["request_id"] == rid]
        return bool(accessed and worker and nginx)

    wait_until(seen, 10, "the request id in the nginx, API (access line included) and worker logs")
    assert {"api_requests"} <= {line["category"] for line in api_lines()}
    worker = [line for line in json_lines(stack.log("worker")) if line["request_id"] == rid]
    assert worker[0]["category"] == "model_operations" and worker[0]["proc"] == "worker"
    everything = "".join(stack.log(name).read_text() for name in ("api-1", "api-2", "worker", "nginx-access"))
    assert prompt not in everything and stack.settings.redis_password not in everything
    print(f"\ngateway overhead {overhead:.2f} ms of {total_ms:.0f} ms; worker lines: {[w['message'] for w in worker]}")


def nice_of(proc: Path) -> int:
    """The nice value of a process or thread (/proc/<pid>[/task/<tid>]/stat, field 19)."""
    return int(stat_fields(proc)[16])


def test_the_default_engine_is_llama_server(stack: NativeStack) -> None:
    """`make up`'s engine on a CPU box: the worker streams from llama-server, which batches the slots; the
    worker runs it as its own child (so it sees it die), and runs itself under the respawn wrapper."""
    argv = stack.stack.proc("worker").argv
    assert "--spawn-llama-server" in argv and "services.stack.respawn" in argv
    assert "llama-server" not in [p.name for p in stack.stack.procs]
    status = httpx.get(f"{stack.url}/v1/system/status", timeout=5).json()
    (worker,) = status["workers"]
    assert worker["engine"] == "llama_server" and worker["slots"] == stack.settings.llama_server_parallel
    assert worker["state"] == "serving" and worker["engine_pid"] and worker["engine_pid"] != worker["pid"]
    # every thread of llama-server (they are made after the exec) runs LLAMA_SERVER_NICE nicer than its worker
    niceness = {nice_of(task) for task in Path(f"/proc/{worker['engine_pid']}/task").iterdir()}
    assert niceness == {min(19, nice_of(Path(f"/proc/{worker['pid']}")) + stack.settings.llama_server_nice)}, niceness
    # it wants the key its worker made (written for Prometheus, 0600), and nobody else's call
    slots_url = f"http://127.0.0.1:{stack.settings.llama_server_port}/slots"
    assert httpx.get(slots_url, timeout=5).status_code == 401
    key = stack.stack.layout.llama_server_key.read_text().strip()
    slots = httpx.get(slots_url, headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert slots.status_code == 200 and len(slots.json()) == stack.settings.llama_server_parallel


def test_chat_through_nginx(stack: NativeStack) -> None:
    reply = client(stack.url).chat.completions.create(model="gemma-3-270m", messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8


def test_streamed_chat_through_nginx(stack: NativeStack) -> None:
    stream = client(stack.url).chat.completions.create(
        model="gemma-3-270m", messages=MESSAGES, max_tokens=8, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[-1].finish_reason in ("length", "stop")


def time_to_first_event(base: str) -> float:
    """Seconds to the first SSE event of a streamed chat: the API commits to 200 and sends its opening chunk
    with the first token (an error before it is an HTTP status), so this includes one token's generation."""
    body = {"model": "gemma-3-270m", "messages": MESSAGES, "max_tokens": 1, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        elapsed = time.monotonic() - start
        assert first != "data: [DONE]"
        for _ in lines:  # let the generation finish before the next measurement
            pass
    return elapsed


def test_nginx_adds_little_to_time_to_first_byte_and_does_not_buffer(stack: NativeStack) -> None:
    direct, proxied = [], []
    for _ in range(5):  # alternate, so a busy moment on the machine hits both sides alike
        direct.append(time_to_first_event(stack.replica_url(1)))
        proxied.append(time_to_first_event(stack.url))
    overhead = statistics.median(proxied) - statistics.median(direct)
    assert overhead < 0.05, (direct, proxied)
    # the tokens of a longer answer reach the client while the rest is being generated
    body = {"model": "gemma-3-270m", "messages": MESSAGES, "max_tokens": 32, "stream": True}
    start, arrivals = time.monotonic(), []
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=300) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and '"content":""' not in line and "[DONE]" not in line:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) > 8 and arrivals[0] < 0.5 * arrivals[-1], arrivals


def test_fifty_concurrent_requests_use_both_replicas(stack: NativeStack) -> None:
    api = client(stack.url)

    def one(i: int) -> str:
        reply = api.chat.completions.create(
            model="gemma-3-270m", messages=MESSAGES, max_tokens=2, extra_headers={"X-Request-ID": f"conc-{i}"}
        )
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(50) as pool:
        reasons = list(pool.map(one, range(50)))
    assert len(reasons) == 50 and set(reasons) <= {"length", "stop"}
    ours = [e for e in access_log(stack) if e["request_id"].startswith("conc-")]
    assert len(ours) == 50 and {e["status"] for e in ours} == {200}
    per_replica = Counter(e["upstream"] for e in ours)
    replicas = {f"127.0.0.1:{stack.settings.api_base_port + i}" for i in range(2)}
    assert set(per_replica) == replicas and min(per_replica.values()) >= 10, per_replica
    # each replica's own log saw the ids nginx sent it
    for n in (1, 2):
        address = f"127.0.0.1:{stack.settings.api_base_port + n - 1}"
        sent = {e["request_id"] for e in ours if e["upstream"] == address}
        logged = {line["request_id"] for line in json_lines(stack.log(f"api-{n}"))}
        assert sent <= logged, sent - logged


def test_nginx_errors_are_openai_envelopes(stack: NativeStack) -> None:
    too_big = httpx.post(f"{stack.url}/v1/chat/completions", content=b"x" * (stack.settings.max_request_bytes + 1))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    missing = httpx.get(f"{stack.url}/v1/no-such-route")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.headers["server"] == "nginx"  # the API's answer, passed through nginx


def test_prometheus_scrapes_every_target(stack: NativeStack) -> None:
    def all_up() -> bool:
        targets = httpx.get(f"{stack.stack.prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
        jobs = Counter(t["labels"]["job"] for t in targets)
        expected = {"api": 2, "worker": 1, "llama-server": 1, "redis": 1, "nginx": 1, "prometheus": 1}
        return jobs == expected and all(t["health"] == "up" for t in targets)

    wait_until(all_up, 30, "prometheus targets all up")


def ask(api: openai.OpenAI, rid: str = "") -> str:
    headers = {"X-Request-ID": rid} if rid else None
    try:
        api.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, max_tokens=2, extra_headers=headers)
    except openai.APIStatusError as exc:
        return f"{exc.status_code} {exc.body}"
    return "ok"


def ask_long(api: openai.OpenAI, rid: str) -> str:
    """A request still generating seconds later: greedy counting does not stop by itself."""
    try:
        headers = {"X-Request-ID": rid}
        api.completions.create(
            model="gemma-3-270m", prompt="1, 2, 3, 4, 5,", max_tokens=96, temperature=0, extra_headers=headers
        )
    except openai.APIStatusError as exc:
        return f"{exc.status_code} should-retry={exc.response.headers.get('x-should-retry')} {exc.body}"
    return "ok"


def test_requests_keep_succeeding_when_a_replica_dies(stack: NativeStack) -> None:
    api = client(stack.url)
    try:
        with ThreadPoolExecutor(6) as pool:
            rids = [f"kill-{i}-{time.monotonic_ns()}" for i in range(6)]
            in_flight = [pool.submit(ask_long, api, rid) for rid in rids]  # least_conn puts some on api-1
            time.sleep(0.5)
            stack.kill("api-1")
            during = [f.result() for f in in_flight]
        after = [ask(api) for _ in range(6)]
        assert after == ["ok"] * 6, after
        # a request the dead replica had already taken ends in a clean 502 envelope, never a hang,
        # and is not sent to another replica behind the client's back (a generation never runs twice)
        assert all(r == "ok" or r.startswith("502") for r in during), during
        assert any(r.startswith("502") for r in during), f"no request was in flight on api-1: {during}"
        # and tells the SDK not to retry it: its generation may still be running until its lease lapses
        assert all(r == "ok" or r.startswith("502 should-retry=false") for r in during), during
        failed = {rid for rid, r in zip(rids, during, strict=True) if r != "ok"}
        survivor_log = stack.log("api-2").read_text()
        assert not {rid for rid in failed if f"rid={rid}" in survivor_log}
    finally:
        stack.start("api-1")


def test_all_replicas_down_is_a_json_502(stack: NativeStack) -> None:
    try:
        stack.kill("api-1")
        stack.kill("api-2")
        resp = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": "gemma-3-270m", "messages": MESSAGES})
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "bad_gateway"
        assert resp.headers["x-request-id"]
        assert resp.headers["x-should-retry"] == "true", "no replica got the request: a retry is safe"
    finally:
        for name in ("api-1", "api-2"):
            if name not in stack.procs:
                stack.start(name)
    # back in service once the replicas are up again (nginx retries them after fail_timeout)
    wait_until(lambda: httpx.get(f"{stack.url}/v1/models").status_code == 200, 30, "replicas back behind nginx")


def test_a_killed_replica_lets_go_of_its_generations_and_admission_slots(stack: NativeStack) -> None:
    """Its leases are no longer renewed: within LEASE_TTL the worker stops generating for it (the slot is
    free, its streams stop growing) and its admission entries fall out."""
    r = redis.Redis.from_url(stack.redis_url)
    body = {"model": "gemma-3-270m", "prompt": "1, 2, 3, 4, 5,", "temperature": 0, "max_tokens": 2000, "stream": True}
    http = httpx.Client(timeout=60)
    try:
        rids, readers = [], []  # a line iterator dropped would close its response
        for _ in range(2):
            resp = http.send(
                http.build_request("POST", f"{stack.replica_url(1)}/v1/completions", json=body), stream=True
            )
            readers.append(resp.iter_lines())
            first = next(line for line in readers[-1] if line.startswith("data: "))
            rids.append(json.loads(first[6:])["id"])
        assert all(r.zscore(keys.inflight(), rid) for rid in rids), (rids, r.zrange(keys.inflight(), 0, -1))
        wait_until(lambda: busy_slots(stack) >= 2, 5, "the worker's heartbeat counts both")
        stack.kill("api-1")
        killed = time.monotonic()
        # an entry past its score no longer counts (admission prunes it before counting)
        expired = lambda: all((r.zscore(keys.inflight(), rid) or 0) < time.time() for rid in rids)  # noqa: E731
        wait_until(expired, 30, "admission slots back")
        slots_back = time.monotonic() - killed
        wait_until(lambda: busy_slots(stack) == 0, 30, "the worker stopped generating for the dead replica")
        worker_free = time.monotonic() - killed
        lengths = [r.xlen(keys.stream(rid)) for rid in rids]
        time.sleep(1.0)
        assert [r.xlen(keys.stream(rid)) for rid in rids] == lengths, "the streams stopped growing"
        ttl = stack.settings.lease_ttl
        assert slots_back < ttl + 3 and worker_free < ttl + 3, (slots_back, worker_free)
        print(f"replica killed: admission slots back in {slots_back:.1f} s, worker free in {worker_free:.1f} s")
    finally:
        with contextlib.suppress(httpx.HTTPError):
            http.close()
        stack.start("api-1")


def busy_slots(stack: NativeStack) -> int:
    workers = httpx.get(f"{stack.replica_url(2)}/v1/system/status", timeout=5).json()["workers"]
    return sum(w["busy"] for w in workers)


def test_a_non_streaming_client_that_hangs_up_through_nginx_cancels_its_generation(stack: NativeStack) -> None:
    """nginx closes its connection to the replica when the client goes; the replica's lease keeper sees it
    within LEASE_TTL/3 and drops the lease, and the worker stops between tokens."""
    body = {"model": "gemma-3-270m", "prompt": "1, 2, 3, 4, 5,", "temperature": 0, "max_tokens": 2000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=3))
    gone = time.monotonic()
    wait_until(lambda: busy_slots(stack) == 0, 20, "the worker stopped generating for nobody")
    took = time.monotonic() - gone
    assert took < stack.settings.lease_ttl / 3 + 3, took
    logs = stack.log("api-1").read_text() + stack.log("api-2").read_text()
    assert "the client hung up" in logs
    print(f"non-streaming hang-up through nginx: worker free {took:.1f} s after the client left")
