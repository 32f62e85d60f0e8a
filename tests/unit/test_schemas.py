"""Request validation: OpenAI's accepted shapes pass, bad ones give a 400 naming the field."""

import json

import pytest

from services.common.errors import InvalidRequest
from services.common.schemas import MAX_STOP_CHARS, ChatCompletionRequest, CompletionRequest, parse


def chat(**extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def test_chat_minimal_defaults():
    body = parse(ChatCompletionRequest, chat())
    assert body.temperature == 1.0 and body.stream is False and body.requested_max_tokens() is None


def test_content_as_text_parts_is_joined():
    raw = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        }
    ).encode()
    assert parse(ChatCompletionRequest, raw).messages[0].text() == "ab"


def test_max_completion_tokens_wins_over_max_tokens():
    assert parse(ChatCompletionRequest, chat(max_tokens=5, max_completion_tokens=7)).requested_max_tokens() == 7


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (chat(temperature=3.0), "temperature"),
        (chat(temperature=-0.1), "temperature"),
        (chat(top_p=1.5), "top_p"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens="10"), "max_tokens"),
        (chat(stream="yes"), "stream"),
        (chat(n=0), "n"),
        (chat(n=129), "n"),
        (chat(stop=[f"s{i}" for i in range(17)]), "stop"),
        (chat(presence_penalty=2.5), "presence_penalty"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": [{"role": "bot", "content": "x"}]}).encode(), "messages[0].role"),
        (json.dumps({"model": "m", "messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content"),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
            "messages[0].content",
        ),
    ],
)
def test_bad_chat_bodies_name_the_param(raw, param):
    with pytest.raises(InvalidRequest) as info:
        parse(ChatCompletionRequest, raw)
    assert info.value.param == param
    assert info.value.status == 400
    assert info.value.envelope()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe"])
def test_invalid_json_is_400_without_param(raw):
    with pytest.raises(InvalidRequest) as info:
        parse(ChatCompletionRequest, raw)
    assert info.value.param is None and "JSON" in info.value.message


def test_non_object_json_is_400():
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse(ChatCompletionRequest, b"[1, 2]")


def test_completion_prompt_string_or_list():
    assert parse(CompletionRequest, b'{"model": "m", "prompt": "x"}').prompts() == ("x",)
    assert parse(CompletionRequest, b'{"model": "m", "prompt": ["y"]}').prompt_text() == "y"
    assert parse(CompletionRequest, b'{"model": "m", "prompt": ["a", "b"]}').prompts() == ("a", "b")
    with pytest.raises(InvalidRequest) as info:
        parse(CompletionRequest, b'{"model": "m", "prompt": []}')
    assert info.value.param == "prompt"


def test_stop_as_string_or_list():
    assert parse(ChatCompletionRequest, chat(stop="\n")).stop_sequences() == ("\n",)
    assert parse(ChatCompletionRequest, chat(stop=["x", "y"])).stop_sequences() == ("x", "y")
    assert parse(ChatCompletionRequest, chat()).stop_sequences() == ()


def test_unknown_fields_are_ignored():
    """Bookkeeping SDKs send (store, metadata, service_tier) does not change the answer: ignored, as vLLM
    does. Every OpenAI parameter that does is parsed (tests/unit/test_tool_calls_and_logprobs.py)."""
    body = parse(ChatCompletionRequest, chat(store=True, metadata={"k": "v"}, service_tier="auto", logit_bias={}))
    assert body.logit_bias == {} and not hasattr(body, "store")


NULLABLE = (
    "frequency_penalty",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "user",
)


@pytest.mark.parametrize("schema", [ChatCompletionRequest, CompletionRequest])
def test_null_for_nullable_parameters_means_the_default(schema):
    """OpenAI documents these as nullable and its SDKs send null for them: it is "not sent", not a 400."""
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt": "p"}
    nulls = parse(schema, json.dumps(base | dict.fromkeys(NULLABLE)).encode())
    assert nulls == parse(schema, json.dumps(base).encode())
    assert nulls.temperature == 1.0 and nulls.top_p == 1.0 and nulls.n == 1 and nulls.stream is False
    assert nulls.include_usage() is False and nulls.stop_sequences() == () and nulls.requested_max_tokens() is None


def test_null_inside_stream_options_and_for_chat_and_completion_only_fields():
    body = parse(
        ChatCompletionRequest, chat(stream=True, stream_options={"include_usage": None}, max_completion_tokens=None)
    )
    assert body.include_usage() is False and body.requested_max_tokens() is None
    done = parse(CompletionRequest, b'{"model": "m", "prompt": "p", "echo": null, "suffix": null}')
    assert done.echo is False and done.suffix is None


@pytest.mark.parametrize("seed", [-(2**63), 0, 2**63 - 1])
def test_seed_within_int64(seed):
    assert parse(ChatCompletionRequest, chat(seed=seed)).seed == seed


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
        ({"stop": ["ok", "y" * (MAX_STOP_CHARS + 1)]}, "stop"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": [None]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"temperature": "0.5"}, "temperature"),
    ],
)
def test_bounded_and_typed_parameters_are_400_naming_them(extra, param):
    with pytest.raises(InvalidRequest) as info:
        parse(ChatCompletionRequest, chat(**extra))
    assert info.value.param == param and info.value.status == 400
    assert set(info.value.envelope()["error"]) == {"message", "type", "param", "code"}


def test_stop_at_the_bound_passes():
    stops = ["z" * MAX_STOP_CHARS] * 4
    assert parse(ChatCompletionRequest, chat(stop=stops)).stop_sequences() == tuple(stops)
