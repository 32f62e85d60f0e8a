"""n > 1, prompt lists and CORS through nginx: the openai SDK for choices, httpx for preflights."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.surface.conftest import ORIGIN
from tests.support.native_stack import NativeStack
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
HI = [{"role": "user", "content": "Tell me a story."}]


def test_chat_n2_merges_choices_and_usage(client: openai.OpenAI) -> None:
    one = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, temperature=0)
    two = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, n=2, seed=3)
    assert [c.index for c in two.choices] == [0, 1]
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in two.choices)
    assert two.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once, as OpenAI counts it
    assert two.usage.completion_tokens <= 12 and two.usage.completion_tokens >= 2
    assert two.usage.total_tokens == two.usage.prompt_tokens + two.usage.completion_tokens


def test_chat_n2_streams_chunks_with_their_index(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=16, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    for chunk in chunks[:-1]:
        assert len(chunk.choices) == 1 and chunk.id == chunks[0].id
        choice = chunk.choices[0]
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    assert set(finishes) == {0, 1} and all(texts.values())
    order = [c.choices[0].index for c in chunks[:-1] if c.choices[0].delta.content]
    assert order.index(1) < len(order) - 1 - order[::-1].index(0), "choice 1 streams while choice 0 does"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 2 <= usage.completion_tokens <= 32


def test_completion_prompt_list_times_n_in_openai_order(client: openai.OpenAI) -> None:
    prompts = ["1, 2, 3,", "The capital of France is"]
    singles = [client.completions.create(model=MODEL, prompt=p, max_tokens=4, temperature=0) for p in prompts]
    both = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    # greedy: each prompt's two choices are its single answer (choices 0-1 for prompt 0, 2-3 for prompt 1)
    assert [c.text for c in both.choices] == [singles[0].choices[0].text] * 2 + [singles[1].choices[0].text] * 2
    assert both.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert both.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in singles)


def test_more_choices_than_max_n_is_400(stack: NativeStack) -> None:
    body = {"model": MODEL, "prompt": ["a", "b", "c"], "n": 3, "max_tokens": 2}
    r = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_cors_preflight_through_nginx(stack: NativeStack) -> None:
    r = httpx.options(
        f"{stack.url}/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"


def test_cors_headers_on_answers_and_errors_for_the_allowed_origin_only(stack: NativeStack) -> None:
    ok = httpx.post(
        f"{stack.url}/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
        headers={"Origin": ORIGIN},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in ok.headers["access-control-expose-headers"]
    bad = httpx.post(f"{stack.url}/v1/completions", json={"model": MODEL}, headers={"Origin": ORIGIN}, timeout=10)
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        f"{stack.url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in other.headers


def inflight(stack: NativeStack) -> int:
    return httpx.get(f"{stack.url}/v1/system/status", timeout=10).json()["inflight"]


def test_a_client_leaving_an_n3_stream_releases_every_choice(stack: NativeStack) -> None:
    """Choices not streamed yet hold admission slots and leases too: all of them go when the client does."""
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "n": 3, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["choices"][0]["index"] in (0, 1, 2)  # choices interleave
        assert inflight(stack) == 3
    # well within LEASE_TTL (10 s), after which unrenewed entries would go anyway
    wait_until(lambda: inflight(stack) == 0, 4, "every choice released")
