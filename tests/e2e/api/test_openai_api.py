"""The OpenAI API end to end: gunicorn + a real llama.cpp worker on Gemma, driven by the `openai` client."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest

from services.common.ports import free_port
from tests.e2e.api.conftest import COUNTING, MAX_BODY, base_env, start_api
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
HI = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def client(api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.v1(), api_key="unused", max_retries=0, timeout=60)


def test_chat_completion_shape_and_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_gives_length(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 6)


def test_openai_model_names_map_to_the_default(client):
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=HI, max_tokens=2)
    assert r.model == MODEL


def test_content_parts_and_seeded_determinism(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a color."}]}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8, temperature=0.8, seed=11)
    b = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8, temperature=0.8, seed=11)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_sequence(client):
    full = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert "5" in text, text
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=["5"])
    assert r.choices[0].finish_reason == "stop" and "5" not in r.choices[0].text
    assert text.startswith(r.choices[0].text)


def test_chat_stream_chunks_then_usage_then_done(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2, "deltas arrive token by token"
    assert len({c.id for c in chunks}) == 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 10 - (finals[0].choices[0].finish_reason == "stop")
    assert all(c.usage is None for c in chunks[:-1])
    nonstream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=10, temperature=0)
    assert "".join(c.choices[0].delta.content for c in content) == nonstream.choices[0].message.content


def test_completion_stream_raw_sse(api):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{api.v1()}/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(p["object"] == "text_completion" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_twenty_concurrent_requests_distinct_ids(client):
    def one(i: int):
        return client.completions.create(model=MODEL, prompt=f"Number {i}:", max_tokens=4)

    with cf.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len({r.id for r in results}) == 20
    assert all(r.usage.completion_tokens >= 1 for r in results)


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": HI, "temperature": 3.0}, "temperature"),
        ({"model": MODEL, "messages": HI, "max_tokens": "x"}, "max_tokens"),
        ({"model": MODEL, "messages": HI, "n": 9}, "n"),  # over MAX_N (8)
        ({"model": MODEL, "messages": HI, "max_tokens": 100_000}, "max_tokens"),
    ],
)
def test_400_names_the_param(api, body, param):
    r = httpx.post(f"{api.v1()}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    assert error_of(r)["param"] == param


def test_streamed_context_overflow_is_400(client):
    """An error known before the first token is an HTTP status for a stream too, as OpenAI answers it."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=100_000, stream=True)
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "max_tokens"


def test_null_for_nullable_parameters_is_accepted(api):
    nulls = dict.fromkeys(("temperature", "top_p", "n", "stream", "presence_penalty", "frequency_penalty", "seed"))
    body = {"model": MODEL, "messages": HI, "max_tokens": 2, "stop": None, "stream_options": None, **nulls}
    r = httpx.post(f"{api.v1()}/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_http_level_errors_are_envelopes(api):
    v1 = api.v1()
    bad_json = httpx.post(f"{v1}/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and error_of(bad_json)["type"] == "invalid_request_error"
    form = httpx.post(f"{v1}/chat/completions", content=b"a=b", headers={"content-type": "text/plain"})
    assert form.status_code == 415 and error_of(form)
    big = httpx.post(
        f"{v1}/chat/completions", content=b"x" * (MAX_BODY + 10), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and error_of(big)
    wrong_method = httpx.get(f"{v1}/chat/completions")
    assert wrong_method.status_code == 405 and error_of(wrong_method) and "POST" in wrong_method.headers["allow"]
    no_route = httpx.get(f"{v1}/nothing-here")
    assert no_route.status_code == 404 and error_of(no_route)


def test_model_errors(api, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="made-up-model", messages=HI)
    assert info.value.body["code"] == "model_not_found"
    r = httpx.post(f"{api.v1()}/chat/completions", json={"model": "qwen-0.5b", "messages": HI}, timeout=30)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0 and error_of(r)


def test_models_listing(api, client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]
    assert client.models.retrieve("gpt-3.5-turbo").id == MODEL
    assert httpx.get(f"{api.v1()}/models/made-up").status_code == 404
    health = httpx.get(f"{api.url}/health").json()
    assert health["status"] == "ok" and health["redis"]["up"] is True


def test_client_disconnect_frees_the_slot(api, client):
    """Two streams fill both slots, the clients vanish, and the slots are free again in seconds."""
    body = {"model": MODEL, **COUNTING, "max_tokens": 1500, "stream": True}
    streams = []
    for _ in range(2):
        ctx = httpx.stream("POST", f"{api.v1()}/completions", json=body, timeout=60)
        resp = ctx.__enter__()
        lines = resp.iter_lines()
        assert next(ln for ln in lines if ln.startswith("data: "))
        streams.append(ctx)
    busy = lambda: httpx.get(f"{api.v1()}/system/status").json()["models"][MODEL]["busy"]  # noqa: E731
    wait_until(lambda: busy() >= 1, 30, "a slot generating for the streams")
    for ctx in streams:
        ctx.__exit__(None, None, None)
    # 1500 tokens take a minute or more here: freed well within that means the generations were cancelled
    wait_until(lambda: busy() == 0, 30, "slots freed after disconnect")
    r = client.completions.create(model=MODEL, max_tokens=3, **COUNTING)
    assert r.usage.completion_tokens == 3


def test_timeout_is_504_and_redis_down_is_503(api, worker_env):
    env = worker_env | {"REQUEST_TIMEOUT": "0.5", "WORKERS": "1"}
    ctx, url = start_api(env, api.logs / "api-timeout.log")
    with ctx as proc:
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, 60, "short-timeout api", proc)
        body = {"model": MODEL, **COUNTING, "max_tokens": 400}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert r.status_code == 504 and error_of(r)["type"] == "timeout"
    dead = base_env(f"redis://127.0.0.1:{free_port()}/0", api.logs) | {"WORKERS": "1"}
    ctx, url = start_api(dead, api.logs / "api-noredis.log")
    with ctx as proc:
        wait_until(lambda: httpx.get(f"{url}/health").status_code in (200, 503), 60, "redis-less api", proc)
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and "retry-after" in health.headers and error_of(health)
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": HI}, timeout=30)
        assert r.status_code == 503 and error_of(r)["type"] == "service_unavailable"


def test_metrics_from_api_and_worker(api, client, worker):
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    httpx.get(f"{api.v1()}/nothing-here")
    text = httpx.get(f"{api.url}/metrics").text
    chat = 'inference_gateway_requests_total{method="POST",model_name="gemma-3-270m",route="/v1/chat/completions",'
    assert chat + 'status="200"}' in text
    assert 'inference_gateway_requests_total{method="GET",model_name="",route="unmatched",status="404"}' in text
    assert "inference_gateway_overhead_seconds_bucket" in text and "inference_gateway_requests_in_flight" in text
    assert "inference_num_requests_waiting" in text and "inference_queue_oldest_age_seconds" in text
    wtext = httpx.get(f"http://127.0.0.1:{worker}/metrics").text
    tokens = [ln for ln in wtext.splitlines() if ln.startswith("inference_generation_tokens_total{")]
    assert tokens and float(tokens[0].rsplit(" ", 1)[1]) >= 3
    assert 'engine="llama_cpp"' in tokens[0] and 'model_name="gemma-3-270m"' in tokens[0] and 'worker="' in tokens[0]
    assert "inference_time_to_first_token_seconds_bucket" in wtext
    assert "inference_request_queue_time_seconds_bucket" in wtext


def test_streaming_client_survives_keepalives_while_queued(api, client):
    """Both slots busy: the third stream waits in the queue past SSE_KEEPALIVE, receiving keep-alives."""
    # long enough that the third request waits well past one keep-alive interval however fast the engine is
    body = {"model": MODEL, **COUNTING, "max_tokens": 300, "stream": True}
    with cf.ThreadPoolExecutor(2) as pool:
        blockers = [
            pool.submit(lambda: httpx.post(f"{api.v1()}/completions", json=body, timeout=120)) for _ in range(2)
        ]
        time.sleep(0.5)
        started = time.monotonic()
        stream = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True)
        chunks = list(stream)
        waited = time.monotonic() - started
        assert all(b.result().status_code == 200 for b in blockers)
    assert waited > 1.5, "the request really waited through keep-alives (SSE_KEEPALIVE=1)"
    assert chunks[-1].choices[0].finish_reason == "length"
