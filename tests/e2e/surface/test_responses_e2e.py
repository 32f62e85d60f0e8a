"""/v1/responses through the whole stack, driven by the openai SDK's `responses.create`, streaming and not;
text on Gemma 270M, function tools on SmolLM2 (a forced choice is enforced by the grammar, so the call's
shape is certain however small the model)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.surface.conftest import CHAT
from tests.support.native_stack import NativeStack

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def test_text_input_answers_a_response_object(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Count: 1, 2, 3,", max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.output_text  # the SDK's own join of the output_text parts
    assert len(r.output) == 1 and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    if r.usage.output_tokens == 8:  # cut by max_output_tokens, as OpenAI reports it
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed"
    assert r.max_output_tokens == 8 and r.temperature == 0 and r.store is False


def test_message_input_and_instructions(client: openai.OpenAI) -> None:
    plain = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "Name a color."}],
        max_output_tokens=6,
        temperature=0,
    )
    instructed = client.responses.create(
        model=MODEL,
        instructions="You answer in French only.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Name a color."}]}],
        max_output_tokens=6,
        temperature=0,
    )
    assert instructed.instructions == "You answer in French only."
    assert instructed.usage.input_tokens > plain.usage.input_tokens  # the instructions reached the prompt


def test_streamed_events_in_openai_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Once upon a time", max_output_tokens=10, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == STREAM_ORDER
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) : -1] == CLOSING
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response
    assert done.text == text == final.output_text
    assert events[0].response.status == "in_progress" and final.status == kinds[-1].removeprefix("response.")
    assert 1 <= final.usage.output_tokens <= 10
    assert len({d.item_id for d in deltas}) == 1 and deltas[0].item_id == final.output[0].id


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
    ],
)
def test_what_cannot_be_served_is_400(stack: NativeStack, extra: dict, param: str) -> None:
    body = {"model": MODEL, "input": "hi"} | extra
    r = httpx.post(f"{stack.url}/v1/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_streamed_error_before_the_first_token_is_an_http_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=100_000, stream=True)
    assert info.value.body["code"] == "context_length_exceeded"


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_forced_function_tool_is_a_function_call_item(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=CHAT,
        input=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        temperature=0,
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1 and r.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city"}  # the grammar enforces the schema
    assert r.tools[0].name == "get_weather" and r.tool_choice.name == "get_weather"

    # the round trip: the call and its output go back as input items, and the model answers in text
    follow = client.responses.create(
        model=CHAT,
        input=[
            *ASK,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=30,
        temperature=0,
    )
    assert follow.output[0].type == "message" and follow.output_text
    assert follow.usage.input_tokens > r.usage.input_tokens  # the call and its result reached the prompt


def test_streamed_function_call_events(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=CHAT,
            input=ASK,
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=60,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    added = next(e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call")
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(deltas) == done.arguments and json.loads(done.arguments)["city"]
    final = events[-1].response
    call = next(item for item in final.output if item.type == "function_call")
    assert call.id == added.item.id == done.item_id and call.arguments == done.arguments
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tools": [WEATHER], "text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ],
)
def test_tools_it_cannot_serve_are_400(stack: NativeStack, extra: dict, param: str) -> None:
    r = httpx.post(f"{stack.url}/v1/responses", json={"model": CHAT, "input": "hi"} | extra, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_text_format(client: openai.OpenAI) -> None:
    """The SDK's responses.parse sends text.format json_schema (strict); the grammar enforces it every run."""
    r = client.responses.parse(
        model=CHAT,
        input="Make up a person with a name and an age.",
        text_format=Person,
        max_output_tokens=200,
        temperature=0,
    )
    assert r.status == "completed"
    assert isinstance(r.output_parsed, Person)
    assert r.text.format.type == "json_schema" and r.text.format.name == "Person"


def test_json_object_format_answers_json(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=CHAT,
        input="Reply with a JSON object describing a cat.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=100,
        temperature=0,
    )
    assert r.output_text.lstrip().startswith("{")  # the grammar allows nothing else
    if r.status == "completed":  # a cut answer is unfinished JSON, as OpenAI warns
        assert isinstance(json.loads(r.output_text), dict)
