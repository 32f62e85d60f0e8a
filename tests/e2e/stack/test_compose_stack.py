"""docker compose, for real: the images built (from Debian's packages where no registry answers), the stack up
and healthy, used through nginx on 127.0.0.1 with a key made on the host, then broken on purpose.

Where no Docker engine answers, Debian's dockerd (`make test` installs docker.io) is started for the module
and stopped after it (tests/support/docker_engine.py); where none can be had, the module skips saying why.
Figures (image sizes, build and start times, memory idle and under 8 streams) are printed and written to
run/tests/compose-figures.json. The tests run in file order on one stack; each leaves it serving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import GEMMA, RUN_DIR
from tests.support import docker_engine
from tests.support.compose_stack import (
    EMBEDDER,
    FILES,
    MAC,
    MODEL,
    ROOT,
    ComposeStack,
    compose_stack,
    image_bytes,
    wait_for,
)
from tests.support.procs import running

pytestmark = pytest.mark.e2e
FIGURES = RUN_DIR / "compose-figures.json"
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "temperature": 0}
"""Greedy counting: Gemma 270M keeps counting without end-of-sequence, so every request is as long as asked."""
API_IMAGE, WORKER_IMAGE = "inference-test/api:1", "inference-test/worker:1"
WORKER = "worker-llamaserver"


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeStack]:
    reason = docker_engine.why_none()
    if reason:
        pytest.skip(reason)
    if not GEMMA.exists():
        pytest.fail(f"{GEMMA} is missing: run `make models`")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with docker_engine.engine(RUN_DIR / "dockerd.log"), compose_stack(FIGURES) as running:
        yield running


def stream(stack: ComposeStack, max_tokens: int, events: list[tuple[float, str]], timeout: float = 120) -> int:
    """A streamed completion; each SSE data line's arrival (seconds, kind) goes to `events`. The status."""
    start = time.monotonic()
    body = COUNTING | {"max_tokens": max_tokens, "stream": True}
    url = f"{stack.url}/v1/completions"
    with httpx.stream("POST", url, json=body, headers=stack.headers(), timeout=timeout) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                kind = "done"
            else:
                chunk = json.loads(data)
                kind = "error" if "error" in chunk else (chunk["choices"][0].get("finish_reason") or "token")
            events.append((time.monotonic() - start, kind))
        return reply.status_code


def tokens_per_second(stack: ComposeStack, tokens: int = 64) -> float:
    """One stream's decoding rate now, from its first token to its last (the machine may be busy)."""
    events: list[tuple[float, str]] = []
    stream(stack, tokens, events)
    return (tokens - 1) / (events[-2][0] - events[0][0])


def test_the_openai_surface_through_nginx_with_a_key_made_on_the_host(stack: ComposeStack) -> None:
    """The keys CLI wrote the file on the host (0644); the replicas (uid 10001) read it through the mount."""
    api = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key, max_retries=0, timeout=120)
    reply = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    chunks = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                              stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) and chunks[-1].choices
    text = api.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0)
    assert text.choices[0].text.strip() and text.choices[0].finish_reason == "length"
    vectors = api.embeddings.create(model=EMBEDDER, input=["a cat", "a dog"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    assert {MODEL, EMBEDDER} <= {m.id for m in api.models.list()}
    refused = httpx.get(f"{stack.url}/v1/models", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["type"]
    assert [c["Config"]["User"] for c in stack.containers("api")] == ["app", "app"]


def test_images_are_small_and_hold_no_compiler(stack: ComposeStack) -> None:
    sizes = {tag: round(image_bytes(tag) / 1e6) for tag in (API_IMAGE, WORKER_IMAGE)}
    stack.record("image_mb", sizes)
    assert sizes[API_IMAGE] <= 250 and sizes[WORKER_IMAGE] <= 400, sizes
    probe = "for c in gcc cc g++ c++ clang cmake make ld as; do command -v $c; done; true"
    for tag in (API_IMAGE, WORKER_IMAGE):
        found = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", tag, "-c", probe],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert found.stdout.strip() == "", f"{tag} holds {found.stdout.split()}"


def test_the_model_is_what_configuration_says(stack: ComposeStack) -> None:
    """llama-server's command comes from models.yaml for DEFAULT_MODEL, inside the image, as compose runs it."""
    made = stack.compose("run", "--rm", "--no-deps", "-e", "DEFAULT_MODEL=smollm2", "llama-server",
                         "python", "-m", "services.worker.llama_server_container", "--print")  # fmt: skip
    argv = made.stdout.split()
    assert argv[argv.index("--model") + 1] == "/models/SmolLM2-135M-Instruct.Q4_1.gguf", made.stdout
    assert argv[argv.index("--alias") + 1] == "smollm2-135m-instruct" and "--jinja" in argv


def test_prometheus_scrapes_every_target(stack: ComposeStack) -> None:
    wanted = Counter({"api": 2, "worker": 2, "llama-server": 2, "redis": 1, "nginx": 1, "prometheus": 1})

    seen: list[dict] = []

    def all_up() -> bool:
        seen[:] = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        up = Counter(t["labels"]["job"] for t in seen if t["health"] == "up")
        return up == wanted and len(seen) == sum(wanted.values())

    try:
        waited = wait_for(all_up, 120, "every target up")
    except TimeoutError:
        raise AssertionError(
            f"targets: {[(t['labels']['job'], t['health'], t.get('lastError')) for t in seen]}"
        ) from None
    stack.record("prometheus_all_up_after_s", round(waited, 1))
    query = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": "min(up)"}, timeout=5).json()
    assert query["data"]["result"][0]["value"][1] == "1"


def test_the_gpu_profile_serves_through_a_stand_in_for_vllm(stack: ComposeStack) -> None:
    """worker-vllm as production runs it (its command, models/ mount, healthcheck) against llama-server on vLLM's
    port, VLLM_MODEL choosing the model: the profile's wiring, where no GPU runs vLLM itself."""
    gpu = ("--profile", "gpu")
    try:
        started = time.monotonic()
        stack.compose(*gpu, "up", "--detach", "--wait", "--wait-timeout", "300", "vllm", "worker-vllm", timeout=400)
        reply = stack.chat(model="smollm2", max_tokens=8)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "smollm2-135m-instruct" and reply.json()["choices"][0]["message"]["content"]
        stack.record("gpu_profile_up_to_answer_s", round(time.monotonic() - started, 1))
        argv = stack.inspect("worker-vllm")["Config"]["Cmd"]
        assert argv[argv.index("--engine") + 1] == "vllm" and argv[argv.index("--model") + 1] == "smollm2-135m-instruct"
    finally:
        stack.compose(*gpu, "rm", "--stop", "--force", "vllm", "worker-vllm", check=False)


def test_a_worker_that_dies_is_restarted_and_its_request_ends_in_a_clean_error(stack: ComposeStack) -> None:
    """Its process killed from outside (SIGKILL, as the OOM killer does): the client of the stream in flight gets
    an error event, not a hang; Docker restarts the container and it serves again. (`docker kill` itself Docker
    takes for a stop: no restart policy brings back what it ended.)"""
    events: list[tuple[float, str]] = []
    done: list[int] = []
    client = threading.Thread(target=lambda: done.append(stream(stack, 1000, events)))
    client.start()
    wait_for(lambda: len(events) >= 3, 60, "the stream's first tokens", interval=0.05)
    killed_at = events[-1][0]
    before = stack.inspect(WORKER)["RestartCount"]
    os.kill(stack.inspect(WORKER)["State"]["Pid"], signal.SIGKILL)
    client.join(90)
    assert not client.is_alive(), "the stream in flight hung"
    assert done == [200] and events[-1][1] == "done" and events[-2][1] == "error", events[-3:]
    stack.record("killed_worker_client_error_after_s", round(events[-2][0] - killed_at, 1))
    back = wait_for(lambda: stack.inspect(WORKER)["RestartCount"] > before and stack.healthy(WORKER), 120, "restart")
    served = wait_for(lambda: stack.chat().status_code == 200, 60, "a chat after the restart")
    stack.record("killed_worker_serving_again_after_s", round(back + served, 1))


def test_stop_lets_a_generation_in_flight_finish(stack: ComposeStack) -> None:
    """`docker compose stop` gives the draining worker stop_grace_period (330 s), not Docker's 10 s: a generation
    in flight when it is stopped ends with all its tokens, and the worker exits 0 once it has."""
    assert stack.inspect(WORKER)["Config"]["StopTimeout"] == 330
    rate = tokens_per_second(stack)
    max_tokens = max(64, min(400, int(rate * 10)))  # about 10 s at the rate just measured (others share the CPUs)
    events: list[tuple[float, str]] = []
    client = threading.Thread(target=lambda: stream(stack, max_tokens, events, timeout=400))
    client.start()
    try:
        wait_for(lambda: len(events) >= 3, 60, "the stream's first tokens", interval=0.05)
        stopping = time.monotonic()
        stack.compose("stop", WORKER, timeout=400)
        stopped_after = time.monotonic() - stopping
        client.join(60)
        kinds = Counter(kind for _, kind in events)
        assert kinds["length"] == 1 and kinds["done"] == 1 and "error" not in kinds, kinds
        assert kinds["token"] + kinds["length"] >= max_tokens * 0.9, (kinds, max_tokens)
        state = stack.inspect(WORKER)["State"]
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        stack.record("drain", {"max_tokens": max_tokens, "tokens_per_s": round(rate, 1),
                               "stop_returned_after_s": round(stopped_after, 1)})  # fmt: skip
    finally:
        stack.compose("start", WORKER)
        wait_for(lambda: stack.healthy(WORKER), 120, "the worker healthy again")
        wait_for(lambda: stack.chat().status_code == 200, 60, "a chat after the start")


def usage_of(stack: ComposeStack, name: str) -> dict:
    reply = httpx.get(f"{stack.url}/v1/usage", headers=stack.headers(stack.admin), timeout=10)
    assert reply.status_code == 200, reply.text
    return next(row for row in reply.json()["data"] if row["key"] == name)


def test_redis_restart_keeps_usage_and_answers_503_meanwhile(stack: ComposeStack) -> None:
    """Redis's container stopped for 3 s and started again (a slow `docker compose restart redis`): requests sent
    meanwhile get a 503 with Retry-After, a stream in flight ends, nothing hangs; usage per key is there afterwards
    (the append-only file on Redis's volume), and the service answers again."""
    assert stack.chat().status_code == 200
    before = usage_of(stack, "compose-user")
    stop = threading.Event()
    answers: list[tuple[float, int | str, str | None]] = []
    latencies: list[float] = []
    began = time.monotonic()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                sent = time.monotonic()
                try:
                    reply = http.post(f"{stack.url}/v1/chat/completions", json=body, headers=stack.headers())
                    answers.append((sent - began, reply.status_code, reply.headers.get("retry-after")))
                except httpx.TimeoutException:
                    answers.append((sent - began, "timeout", None))
                latencies.append(time.monotonic() - sent)
                time.sleep(0.05)

    in_flight: list[tuple[float, str]] = []
    streamed: list[int | str] = []

    def long_stream() -> None:
        try:
            streamed.append(stream(stack, 400, in_flight, timeout=60))
        except httpx.HTTPError as exc:
            streamed.append(type(exc).__name__)

    with ThreadPoolExecutor(4) as pool:
        pool.submit(long_stream)
        wait_for(lambda: len(in_flight) >= 2, 60, "the stream's first tokens", interval=0.05)
        for _ in range(3):
            pool.submit(client)
        time.sleep(1)
        stack.compose("stop", "redis")
        time.sleep(3)
        stack.compose("start", "redis")
        wait_for(lambda: stack.healthy("redis"), 60, "redis healthy again")
        wait_for(lambda: stack.chat().status_code == 200, 60, "a chat after Redis came back")
        stop.set()
    statuses = Counter(status for _, status, _ in answers)
    refused = [at for at, status, _ in answers if status == 503]
    window = round(max(refused) - min(refused), 1) if refused else 0
    stream_kinds = dict(Counter(kind for _, kind in in_flight))
    slowest = round(max(latencies), 1)
    stack.record("redis_stopped_3s", {"answers": dict(statuses), "503_window_s": window, "slowest_answer_s": slowest,
                                      "stream": stream_kinds})  # fmt: skip
    assert set(statuses) <= {200, 503} and statuses[503] > 0, statuses
    assert all(retry for _, status, retry in answers if status == 503), "a 503 without Retry-After"
    assert streamed and in_flight and in_flight[-1][1] == "done", (streamed, in_flight[-3:])
    after = usage_of(stack, "compose-user")
    assert after["requests"] >= before["requests"] + 1 and after["completion_tokens"] > before["completion_tokens"]


def test_memory_idle_and_under_8_streams(stack: ComposeStack) -> None:
    idle = stack.memory()
    peak = dict(idle)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, mib in stack.memory().items():
                peak[name] = max(peak.get(name, 0), mib)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: stream(stack, 96, []), range(8)))
    stop.set()
    sampler.join()
    assert runs == [200] * 8
    stack.record("memory_mib", {name: {"idle": idle.get(name), "8_streams": peak[name]} for name in sorted(peak)})
    assert all(mib < 2048 for mib in peak.values()), peak


def test_the_mac_file_runs_all_but_the_engine_and_a_worker_on_the_host_joins(stack: ComposeStack) -> None:
    """compose/docker-compose.mac.yml (last: it recreates Redis) publishes Redis on 127.0.0.1 with its password; a
    worker run on the host, as the MLX worker runs natively on a Mac (here llama.cpp in process, SmolLM2), joins
    through it and answers through nginx."""
    files = (*FILES[:2], MAC, FILES[2])
    assert set(stack.compose("config", "--services", files=files).stdout.split()) == {
        "redis", "api", "nginx", "prometheus", "redis-exporter", "nginx-exporter"
    }  # fmt: skip
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "300", files=files)
    port = stack.env["REDIS_PUBLISH_PORT"]
    published = subprocess.run(["docker", "port", stack.inspect("redis")["Id"], "6379"], capture_output=True, text=True)
    assert published.stdout.split() == [f"127.0.0.1:{port}"], published.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "API_KEYS", "DEFAULT_"))}
    env["REDIS_URL"] = f"redis://:{stack.env['REDIS_PASSWORD']}@127.0.0.1:{port}/0"
    argv = [sys.executable, "-m", "services.worker", "--engine", "llama_cpp", "--model", "smollm2-135m-instruct",
            "--slots", "1", "--metrics-port", "0"]  # fmt: skip
    with running(argv, log=RUN_DIR / f"compose-{stack.project}-host-worker.log", env=env, cwd=ROOT):
        joined = wait_for(lambda: stack.chat(model="smollm2", max_tokens=8).status_code == 200, 120, "the host worker")
        status = httpx.get(f"{stack.url}/v1/system/status", headers=stack.headers(stack.admin), timeout=10).json()
        assert "llama_cpp" in json.dumps(status), status
    stack.record("mac_file_host_worker_answered_after_s", round(joined, 1))
