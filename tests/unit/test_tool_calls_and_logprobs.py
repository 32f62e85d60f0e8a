"""The pure parts of tools, structured output and logprobs: request validation, the forced tool choice's
schema and translation, the sidecar wire (tool-call deltas, both logprobs shapes), events and bodies."""

from __future__ import annotations

import json

import pytest

from services.api.routes import completion_shapes as shapes
from services.common import events
from services.common.errors import InvalidRequest
from services.common.events import Usage
from services.common.jobs import SamplingParams
from services.common.schemas import ChatCompletionRequest, CompletionRequest, parse
from services.worker.engines import features
from services.worker.engines.base import Finish, TokenChunk
from services.worker.engines.forced_tools import ForcedTools
from services.worker.engines.upstream import CompletionStream, logprob_entries, tool_call_deltas


def tool(name: str) -> dict:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    return {"type": "function", "function": {"name": name, "parameters": params}}


def chat(**extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def test_tools_tool_turns_and_response_format_validate() -> None:
    body = parse(
        ChatCompletionRequest,
        chat(
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            tools=[tool("w")],
            tool_choice={"type": "function", "function": {"name": "w"}},
            parallel_tool_calls=None,
        ),
    )  # fmt: skip
    assert body.tool_choice_wire() == {"type": "function", "function": {"name": "w"}}
    assert body.parallel_tool_calls is True
    assert body.messages[1].tool_calls[0].id == "call_1" and body.messages[2].tool_call_id == "call_1"
    fmt = parse(ChatCompletionRequest, chat(response_format={"type": "json_schema", "json_schema": {"name": "p"}}))
    assert fmt.response_format.to_wire() == {
        "type": "json_schema",
        "json_schema": {"name": "p", "schema": {"type": "object"}},
    }
    assert parse(ChatCompletionRequest, chat(response_format={"type": "text"})).response_format.to_wire() is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [tool("w")], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice"),
        ({"tools": [tool("w")], "response_format": {"type": "json_object"}}, "response_format"),
        ({"top_logprobs": 1}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"1": 1.0}}, "logit_bias"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, None),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ],
)
def test_inconsistent_or_unsupported_options_are_400s_naming_them(extra: dict, param: str | None) -> None:
    if param is None:  # an empty tool_calls list on a user turn is harmless
        parse(ChatCompletionRequest, chat(**extra))
        return
    with pytest.raises(InvalidRequest) as exc:
        parse(ChatCompletionRequest, chat(**extra))
    assert exc.value.param == param


def test_completions_logprobs_is_the_legacy_count() -> None:
    body = json.dumps({"model": "m", "prompt": "x", "logprobs": 3}).encode()
    assert parse(CompletionRequest, body).logprobs == 3
    with pytest.raises(InvalidRequest) as exc:
        parse(CompletionRequest, json.dumps({"model": "m", "prompt": "x", "logprobs": 6}).encode())
    assert exc.value.param == "logprobs"


def test_features_refuse_the_first_unserved_one_by_name() -> None:
    asked = SamplingParams(max_tokens=1, tools=(tool("w"),), tool_choice="auto", logprobs=True, top_k=3)
    assert features.used(asked) == ["tools", "logprobs", "top_k"]
    with pytest.raises(InvalidRequest) as exc:
        features.require(asked, "mlx", frozenset({"tools"}))
    assert exc.value.param == "logprobs" and exc.value.code == "unsupported_parameter"
    none = SamplingParams(max_tokens=1, tools=(tool("w"),), tool_choice="none")
    features.require(none, "mlx", frozenset())  # tool_choice none: the tools are not used, nothing to refuse


def forced(**kw) -> ForcedTools:
    found = ForcedTools.of(SamplingParams(max_tokens=8, **kw))
    assert found is not None
    return found


def test_forced_schemas_follow_vllm() -> None:
    assert ForcedTools.of(SamplingParams(max_tokens=8, tools=(tool("a"),), tool_choice="auto")) is None
    named = forced(tools=(tool("a"), tool("b")), tool_choice={"type": "function", "function": {"name": "b"}})
    assert named.tools == [tool("b")] and named.schema() == tool("b")["function"]["parameters"]
    many = forced(tools=(tool("a"), tool("b")), tool_choice="required", parallel_tool_calls=False).schema()
    assert many["type"] == "array" and many["minItems"] == 1 and many["maxItems"] == 1
    names = [alt["properties"]["name"]["const"] for alt in many["items"]["anyOf"]]
    assert names == ["a", "b"]
    assert "maxItems" not in forced(tools=(tool("a"), tool("b")), tool_choice="required").schema()


def test_a_single_forced_call_streams_its_arguments() -> None:
    items = [TokenChunk('{"city"', 2), TokenChunk(': "Rome"}', 3), TokenChunk("", 1), Finish("stop", 10, 6)]
    out = list(forced(tools=(tool("a"),), tool_choice="required").translate(iter(items)))
    chunks, finish = out[:-1], out[-1]
    assert finish == Finish("tool_calls", 10, 6)
    assert sum(c.tokens for c in chunks) == 6 and all(c.text == "" for c in chunks)
    head = chunks[0].tool_calls[0]
    assert head["id"].startswith("call_") and head["function"]["name"] == "a" and head["index"] == 0
    calls: list[dict] = []
    for c in chunks:
        shapes.merge_tool_calls(calls, c.tool_calls or ())
    assert calls == [{"id": head["id"], "type": "function", "function": {"name": "a", "arguments": '{"city": "Rome"}'}}]


def test_a_choice_among_tools_becomes_calls_at_the_end() -> None:
    text = json.dumps([{"name": "b", "arguments": {"city": "Rome"}}, {"name": "a", "arguments": {"city": "Oslo"}}])
    items = [TokenChunk(text[:10], 4), TokenChunk(text[10:], 20), Finish("stop", 5, 24)]
    out = list(forced(tools=(tool("a"), tool("b")), tool_choice="required").translate(iter(items)))
    assert out[-1].reason == "tool_calls"
    (chunk,) = out[:-1]
    assert chunk.tokens == 24 and [c["function"]["name"] for c in chunk.tool_calls] == ["b", "a"]
    assert json.loads(chunk.tool_calls[1]["function"]["arguments"]) == {"city": "Oslo"}
    assert len({c["id"] for c in chunk.tool_calls}) == 2
    cut = list(
        forced(tools=(tool("a"), tool("b")), tool_choice="required").translate(
            iter([*items[:1], Finish("length", 5, 4)])
        )
    )
    assert cut == [TokenChunk(text[:10], 4), Finish("length", 5, 4)]  # no calls from half a JSON


def test_sidecar_tool_call_deltas_get_openai_ids_and_indexes() -> None:
    deltas = tool_call_deltas([{"id": "abc", "type": "function", "function": {"name": "w", "arguments": ""}}])
    assert deltas == ({"index": 0, "id": "call_abc", "type": "function", "function": {"name": "w", "arguments": ""}},)
    assert tool_call_deltas([{"index": 1, "function": {"arguments": "{}"}}]) == (
        {"index": 1, "function": {"arguments": "{}"}},
    )
    assert tool_call_deltas(None) is None and tool_call_deltas([]) is None

    stream = CompletionStream("llama_server", context=100, max_tokens=10, explicit=True)
    call = {"index": 0, "id": "call_x", "type": "function", "function": {"name": "w", "arguments": "{}"}}
    events_in = [
        {"choices": [{"delta": {"tool_calls": [call]}}], "timings": {"prompt_n": 7, "predicted_n": 3}},
        {
            "choices": [{"delta": {}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 4},
        },
    ]
    items = [i for e in events_in for i in stream.feed(e)] + list(stream.finish())
    assert items[0].tool_calls[0]["id"] == "call_x" and items[0].tokens == 3
    assert items[-1] == Finish("tool_calls", 7, 4)


def test_both_logprobs_shapes_become_openai_chat_entries() -> None:
    top = {"id": 5, "token": "Hi", "bytes": [72, 105], "logprob": -0.5}
    chat_shape = {"content": [{**top, "top_logprobs": [top]}]}
    (entry,) = logprob_entries(chat_shape)
    assert entry == {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                     "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}  # fmt: skip
    legacy = {
        "tokens": ["Hi", "!"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"Hi": -0.5}, {"!": -1.0, "?": -2.0}],
    }
    converted = logprob_entries(legacy)
    assert [e["token"] for e in converted] == ["Hi", "!"] and len(converted[1]["top_logprobs"]) == 2
    assert logprob_entries(None) is None
    assert shapes.text_logprobs(converted, offset=3) == {
        "tokens": ["Hi", "!"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"Hi": -0.5}, {"!": -1.0, "?": -2.0}],
        "text_offset": [3, 5],
    }


def test_events_and_bodies_carry_tool_calls_and_logprobs() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
    lp = {"token": "a", "logprob": -1.0, "bytes": [97], "top_logprobs": []}
    delta = events.Delta("", 2, tool_calls=(call,), logprobs=(lp,))
    assert events.decode(events.encode(delta)) == delta
    plain = events.encode(events.Delta("x", 1))
    assert set(json.loads(plain["data"])) == {"text", "tokens"}  # the common delta stays small
    done = events.Done("tool_calls", Usage(3, 2))
    assert events.decode(events.encode(done)).finish_reason == "tool_calls"

    body = shapes.chat_completion("id", 1, "m", "", "tool_calls", Usage(3, 2), [call], None)
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == [call] and body["choices"][0]["logprobs"] is None
    body = shapes.chat_completion("id", 1, "m", "a", "stop", Usage(3, 1), None, [lp])
    assert "tool_calls" not in body["choices"][0]["message"]
    assert body["choices"][0]["logprobs"] == {"content": [lp], "refusal": None}
