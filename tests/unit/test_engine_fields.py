"""Parsing of the engines' own request fields (common/engine_fields.py) and the bounds on `stop`: what each
becomes in SamplingParams, and the 400s that name the field. Before, every one of them was dropped silently
(extra="ignore") and more than four stops were a 400."""

from __future__ import annotations

import json

import pytest

from services.common.engine_fields import sampling
from services.common.errors import InvalidRequest
from services.common.schemas import ChatCompletionRequest, CompletionRequest, parse

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TEXT = {"model": "m", "prompt": "def f():"}


def chat(**kw) -> dict:
    return sampling(parse(ChatCompletionRequest, json.dumps(CHAT | kw).encode()), chat=True)


def text(**kw) -> dict:
    return sampling(parse(CompletionRequest, json.dumps(TEXT | kw).encode()), chat=False)


def refused(schema, **kw) -> InvalidRequest:
    base = CHAT if schema is ChatCompletionRequest else TEXT
    with pytest.raises(InvalidRequest) as err:
        body = parse(schema, json.dumps(base | kw).encode())
        sampling(body, chat=schema is ChatCompletionRequest)
    return err.value


def test_llama_cpp_fields() -> None:
    assert chat(grammar='root ::= "a"', cache_prompt=False) == {"grammar": 'root ::= "a"', "cache_prompt": False}
    assert text(grammar='root ::= "a"') == {"grammar": 'root ::= "a"'}
    assert chat(continue_final_message=True, add_generation_prompt=False) == {
        "add_generation_prompt": False,
        "continue_final_message": True,
    }


def test_a_bare_json_schema_is_a_json_schema_response_format() -> None:
    want = {"type": "json_schema", "json_schema": {"name": "json_schema", "schema": {"type": "integer"}}}
    assert chat(json_schema={"type": "integer"})["response_format"] == want
    assert text(json_schema={"type": "integer"})["response_format"] == want
    body = parse(
        ChatCompletionRequest,
        json.dumps(CHAT | {"response_format": {"type": "json_object", "schema": {"type": "integer"}}}).encode(),
    )
    assert body.response_format.to_wire() == want
    plain = parse(ChatCompletionRequest, json.dumps(CHAT | {"response_format": {"type": "json_object"}}).encode())
    assert plain.response_format.to_wire() == {"type": "json_object"}


def test_n_probs_is_logprobs_with_alternatives() -> None:
    assert chat(n_probs=3) == {"logprobs": True, "top_logprobs": 3}
    assert text(n_probs=2) == {"logprobs": True, "top_logprobs": 2}
    assert refused(CompletionRequest, n_probs=6).param == "n_probs"
    assert refused(ChatCompletionRequest, n_probs=3, logprobs=True, top_logprobs=2).param == "n_probs"
    assert refused(ChatCompletionRequest, n_probs=21).param == "n_probs"


def test_vllm_guided_fields_travel_as_sent() -> None:
    sent = {"guided_json": {"type": "object"}, "guided_regex": "[0-9]+", "guided_choice": ["a", "b"]}
    assert chat(**sent) == {"guided": sent}
    assert text(structured_outputs={"choice": ["x"]}, guided_grammar="root ::= x") == {
        "guided": {"guided_grammar": "root ::= x", "structured_outputs": {"choice": ["x"]}}
    }


@pytest.mark.parametrize(
    ("schema", "fields", "param"),
    [
        (ChatCompletionRequest, {"timings_per_token": True}, "timings_per_token"),
        (ChatCompletionRequest, {"grammar": "x", "response_format": {"type": "json_object"}}, "grammar"),
        (ChatCompletionRequest, {"grammar": "x", "json_schema": {}}, "grammar"),
        (ChatCompletionRequest, {"json_schema": {}, "response_format": {"type": "json_object"}}, "json_schema"),
        (
            ChatCompletionRequest,
            {"add_generation_prompt": True, "continue_final_message": True},
            "continue_final_message",
        ),
        (ChatCompletionRequest, {"grammar": 5}, "grammar"),
        (ChatCompletionRequest, {"response_format": {"type": "text", "schema": {}}}, "response_format.schema"),
        (CompletionRequest, {"stop": ["s"] * 17}, "stop"),
        (CompletionRequest, {"stop": ["s" * 257]}, "stop"),
    ],
)
def test_refused_naming_the_field(schema, fields, param) -> None:
    assert refused(schema, **fields).param == param


def test_sixteen_stops_and_a_suffix_are_accepted() -> None:
    body = parse(CompletionRequest, json.dumps(TEXT | {"stop": [f"s{i}" for i in range(16)], "suffix": "x"}).encode())
    assert len(body.stop_sequences()) == 16
    assert sampling(body, chat=False) == {"suffix": "x"}
    assert text(suffix="") == {}  # OpenAI's empty suffix: none
