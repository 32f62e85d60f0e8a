"""The in-process llama.cpp engine's column of the README's parameter table, over HTTP with the openai SDK:
a JSON schema enforced by its grammar, logprobs, the vendor extras, and tools refused with a 400 that
names the parameter, streamed or not (the refusal comes before the first token, so it is the status)."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
ASK = [{"role": "user", "content": "Pick a color."}]
TOOL = {"type": "function", "function": {"name": "pick", "parameters": {"type": "object", "properties": {}}}}


class Color(BaseModel):
    color: str


@pytest.fixture(scope="module")
def client(api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.v1(), api_key="unused", max_retries=0, timeout=120)


def test_a_json_schema_is_met_by_the_grammar(client: openai.OpenAI) -> None:
    schema = Color.model_json_schema() | {"additionalProperties": False}
    schema["properties"]["color"] = {"type": "string", "enum": ["red", "green", "blue"]}
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "color", "schema": schema, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    assert Color.model_validate_json(r.choices[0].message.content or "").color in ("red", "green", "blue")


def test_json_object_mode(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=60, temperature=0, response_format={"type": "json_object"}
    )
    text = r.choices[0].message.content or ""
    if r.choices[0].finish_reason == "stop":
        json.loads(text)
    else:
        assert text.lstrip().startswith(("{", "["))


def test_vendor_extras_reach_the_sampler(client: openai.OpenAI) -> None:
    greedy = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=0)
    top1 = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=10, temperature=1.0, seed=5, extra_body={"top_k": 1, "min_p": 0.1}
    )
    assert top1.choices[0].message.content == greedy.choices[0].message.content


def test_logprobs_from_the_logits_each_token_was_drawn_from(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert (
        len(content) == r.usage.completion_tokens and "".join(t.token for t in content) == r.choices[0].message.content
    )
    assert all(t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in content)  # greedy: the top token
    c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == 3 and "".join(c.choices[0].logprobs.tokens) == c.choices[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_tools_are_a_400_naming_them(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, stream=stream, tools=[TOOL])
        if stream:
            list(r)
    body = refused.value.body
    assert refused.value.status_code == 400 and body["param"] == "tools" and body["code"] == "unsupported_parameter"
