"""/v1/responses through the whole stack, driven by the openai SDK's `responses.create`, streaming and not."""

from __future__ import annotations

import httpx
import openai
import pytest

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
