"""Bounded everything (issue 25): every integer a request body carries has a ceiling and a floor, and no
error message repeats more than a few dozen characters of what the client sent.

Before: `top_k` 10^20 was accepted, and a 900 KB model name came back whole in the 404.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from services.api.routes.embeddings import EmbeddingRequest
from services.api.routes.responses import ResponseRequest
from services.common.catalog import Catalog, ModelSpec
from services.common.errors import ECHO_CHARS, APIError, InvalidRequest, ModelNotFound
from services.common.schemas import ChatCompletionRequest, CompletionRequest, ModelCommand, parse

BODIES: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseRequest,
    ModelCommand,
)
HUGE = 10**20
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
EMBEDDING = {"model": "m", "input": "hi"}
RESPONSE = {"model": "m", "input": "hi"}


def integers(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every integer in a JSON schema, with where it sits."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield path, node
        for key, value in node.items():
            yield from integers(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from integers(value, f"{path}/{i}")


@pytest.mark.parametrize("model", BODIES, ids=lambda m: m.__name__)
def test_every_integer_of_every_request_body_is_bounded_both_ways(model):
    found = list(integers(model.model_json_schema()))
    unbounded = [
        path
        for path, node in found
        if not ({"minimum", "exclusiveMinimum"} & node.keys() and {"maximum", "exclusiveMaximum"} & node.keys())
    ]
    assert not unbounded, f"{model.__name__}: integers without both bounds at {unbounded}"


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        (ChatCompletionRequest, CHAT | {"top_k": HUGE}, "top_k"),
        (ChatCompletionRequest, CHAT | {"max_tokens": HUGE}, "max_tokens"),
        (ChatCompletionRequest, CHAT | {"max_completion_tokens": HUGE}, "max_completion_tokens"),
        (ChatCompletionRequest, CHAT | {"n": HUGE}, "n"),
        (ChatCompletionRequest, CHAT | {"seed": HUGE}, "seed"),
        (ChatCompletionRequest, CHAT | {"seed": -HUGE}, "seed"),
        (ChatCompletionRequest, CHAT | {"logprobs": True, "top_logprobs": HUGE}, "top_logprobs"),
        (CompletionRequest, COMPLETION | {"top_k": HUGE}, "top_k"),
        (CompletionRequest, COMPLETION | {"max_tokens": HUGE}, "max_tokens"),
        (CompletionRequest, COMPLETION | {"logprobs": HUGE}, "logprobs"),
        (EmbeddingRequest, EMBEDDING | {"dimensions": HUGE}, "dimensions"),
        (EmbeddingRequest, EMBEDDING | {"input": [1, HUGE]}, "input[1]"),
        (EmbeddingRequest, EMBEDDING | {"input": [[1], [2, HUGE]]}, "input[1][1]"),
        (ResponseRequest, RESPONSE | {"max_output_tokens": HUGE}, "max_output_tokens"),
    ],
)
def test_an_integer_past_its_bound_is_a_400_naming_it(model, body, param):
    with pytest.raises(InvalidRequest) as info:
        parse(model, json.dumps(body).encode())
    assert info.value.status == 400 and info.value.param == param, info.value.message
    assert "less than or equal" in info.value.message or "greater than or equal" in info.value.message


def test_bounds_leave_room_for_every_real_request():
    body = parse(ChatCompletionRequest, json.dumps(CHAT | {"max_tokens": 1_000_000, "top_k": 262_144}).encode())
    assert body.max_tokens == 1_000_000 and body.top_k == 262_144
    assert parse(EmbeddingRequest, json.dumps(EMBEDDING | {"input": [262_143]}).encode()).inputs() == ((262_143,),)


def test_a_huge_model_name_is_not_echoed_whole_in_the_404():
    catalog = Catalog({"m": ModelSpec(id="m")}, "m")
    name = "x" * 900_000
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve(name)
    message = info.value.envelope()["error"]["message"]
    assert len(message) < ECHO_CHARS + 40 and "x" * (ECHO_CHARS - 1) + "\u2026" in message, message[:200]


def test_a_dict_key_in_a_bad_field_is_clipped_in_param_and_message():
    body = CHAT | {"logit_bias": {"k" * 10_000: "not a number"}}
    with pytest.raises(InvalidRequest) as info:
        parse(ChatCompletionRequest, json.dumps(body).encode())
    assert info.value.param.startswith("logit_bias.kkk") and len(info.value.param) <= len("logit_bias.") + ECHO_CHARS
    assert len(info.value.message) < 300, info.value.message[:300]


def test_a_bad_content_part_type_is_clipped():
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "t" * 50_000, "text": "x"}]}]}
    with pytest.raises(InvalidRequest) as info:
        parse(ChatCompletionRequest, json.dumps(body).encode())
    assert len(info.value.message) < 300, info.value.message[:300]


def test_a_responses_tool_choice_name_is_bounded_as_chat_s_is():
    choice = {"type": "function", "name": "g" * 9000}
    body = RESPONSE | {"tools": [{"type": "function", "name": "f"}], "tool_choice": choice}
    with pytest.raises(InvalidRequest) as info:
        parse(ResponseRequest, json.dumps(body).encode())
    assert info.value.param.startswith("tool_choice") and len(info.value.message) < 300, info.value.message[:300]


def test_any_error_envelope_is_bounded_whatever_built_it():
    error = APIError("m" * 1_000_000, param="p" * 1_000_000).envelope()["error"]
    assert len(error["message"]) <= 2048 and len(error["param"]) <= 256
