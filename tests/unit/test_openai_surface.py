"""Pure parts of embeddings, responses, n > 1 and CORS: request parsing, choice order, merged usage, shapes."""

from __future__ import annotations

import json

import pytest

from services.api.app import cors
from services.api.routes.embeddings import EmbeddingRequest, embedding_list
from services.api.routes.fanout import IndexedFormat, choice_jobs, merged_usage
from services.api.routes.responses import ResponseRequest
from services.api.routes.responses_stream import ResponseOutput
from services.common.errors import InvalidRequest
from services.common.events import Delta, Usage, pack_vector
from services.common.jobs import Job, SamplingParams
from services.common.schemas import SEED_MAX, ChatCompletionRequest, CompletionRequest, parse


def body(model: type, **fields: object):
    return parse(model, json.dumps({"model": "m", **fields}).encode())


def job(seed: int | None = None) -> Job:
    params = SamplingParams(max_tokens=4, seed=seed)
    return Job(request_id="cmpl-x", model="m", kind="completion", prompt="", params=params, accepted_at=0, deadline=1)


def test_choices_go_prompt_by_prompt_n_each_with_their_own_ids_and_seeds() -> None:
    req = body(CompletionRequest, prompt=["a", "b"], n=2, seed=SEED_MAX - 1)
    jobs = choice_jobs(req, job(SEED_MAX - 1), max_n=8)
    assert [j.prompt for j in jobs] == ["a", "a", "b", "b"]
    assert [j.request_id for j in jobs] == ["cmpl-x", "cmpl-x-c1", "cmpl-x-c2", "cmpl-x-c3"]
    assert [j.params.seed for j in jobs] == [SEED_MAX - 1, SEED_MAX, SEED_MAX - 1, SEED_MAX]


def test_seed_past_int64_steps_down() -> None:
    req = body(ChatCompletionRequest, messages=[{"role": "user", "content": "x"}], n=3, seed=SEED_MAX)
    assert [j.params.seed for j in choice_jobs(req, job(SEED_MAX), max_n=8)] == [SEED_MAX, SEED_MAX - 1, SEED_MAX - 2]


def test_more_choices_than_max_n_is_a_400_naming_n() -> None:
    with pytest.raises(InvalidRequest) as info:
        choice_jobs(body(CompletionRequest, prompt=["a", "b", "c"], n=3), job(), max_n=8)
    assert info.value.param == "n" and "9" in info.value.message


def test_usage_counts_each_prompt_once_and_every_completion() -> None:
    usages = [Usage(5, 3), Usage(5, 4), Usage(7, 1), Usage(7, 2)]  # two prompts, n=2
    assert merged_usage(usages, 2) == Usage(12, 10)


def test_a_choice_chunk_carries_its_index() -> None:
    fmt = IndexedFormat(True, "chatcmpl-x", 0, "m", with_usage=False, index=3)
    assert fmt.opening()["choices"][0]["index"] == 3
    assert fmt.delta("hi")["choices"][0] == {
        "index": 3,
        "delta": {"content": "hi"},
        "logprobs": None,
        "finish_reason": None,
    }
    assert fmt.closing("stop")["choices"][0]["index"] == 3


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("one", ("one",)),
        (["a", "b"], ("a", "b")),
        ([1, 2, 3], ((1, 2, 3),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
    ],
)
def test_embedding_inputs(value: object, inputs: tuple) -> None:
    assert body(EmbeddingRequest, input=value).inputs() == inputs


@pytest.mark.parametrize("value", ["", [], ["a", ""], [-1], [[]], 5, ["a", 1]])
def test_bad_embedding_inputs_are_400_naming_input(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        body(EmbeddingRequest, input=value)
    assert info.value.param.startswith("input")


def test_embedding_list_float_and_base64() -> None:
    packed = pack_vector([0.5, -1.0])
    as_float = embedding_list("m", (packed,), "float", Usage(4, 0))
    assert as_float == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}],
        "model": "m",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    assert embedding_list("m", (packed,), "base64", Usage(4, 0))["data"][0]["embedding"] == packed


def test_responses_input_becomes_the_chat() -> None:
    req = body(
        ResponseRequest,
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather "}, {"type": "input_text", "text": "in Oslo?"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {"type": "function_call_output", "call_id": "c2", "output": "noon"},
        ],
    )
    turns = req.messages()
    assert [(t.role, t.content) for t in turns] == [
        ("system", "Be brief."),
        ("system", "Use tools."),
        ("user", "Weather in Oslo?"),
        ("assistant", ""),
        ("tool", "rain"),
        ("tool", "noon"),
    ]
    assert [c["id"] for c in turns[3].tool_calls] == ["c1", "c2"]
    assert turns[3].tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert [t.tool_call_id for t in turns[4:]] == ["c1", "c2"]


def test_responses_tools_in_the_chat_apis_shape() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    req = body(ResponseRequest, input="x", tools=[tool], tool_choice={"type": "function", "name": "f"})
    assert req.tool_params() == {
        "tools": ({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},),
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": True,
    }
    assert body(ResponseRequest, input="x").tool_params() == {}


def test_response_output_orders_items_as_they_began() -> None:
    out = ResponseOutput("resp_abc")
    list(out.feed(Delta("Let me check.", 3)))
    list(
        out.feed(
            Delta("", 1, tool_calls=({"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}},))
        )
    )
    list(out.feed(Delta("", 1, tool_calls=({"index": 0, "function": {"arguments": ":1}"}},))))
    list(out.close("completed"))
    message, call = out.items("completed")
    assert message["type"] == "message" and message["content"][0]["text"] == "Let me check."
    assert call == {
        "id": "fc_abc_0",
        "type": "function_call",
        "status": "completed",
        "arguments": '{"a":1}',
        "call_id": "call_1",
        "name": "f",
    }


def test_an_empty_answer_is_one_empty_message() -> None:
    out = ResponseOutput("resp_abc")
    list(out.close("completed"))
    assert out.items("completed") == [
        {"id": "msg_abc", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}
    ]  # fmt: skip


def test_cors_origins_setting() -> None:
    assert cors("*").allow_origins == "*"
    assert cors("https://a.example, https://b.example").allow_origins == {"https://a.example", "https://b.example"}


@pytest.mark.parametrize(("origins", "allowed"), [("", None), ("https://a.example", "https://a.example")])
def test_cors_is_off_unless_configured(origins: str, allowed: str | None) -> None:
    """A preflight never touches Redis, so an app on an unreachable one answers it."""
    import falcon.testing
    import redis
    import redis.backoff
    import redis.retry

    from services.api.app import create_app
    from services.common.catalog import Catalog
    from services.common.settings import Settings

    settings = Settings(cors_origins=origins)
    nowhere = redis.Redis(port=1, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    app = create_app(settings, nowhere, Catalog.from_yaml(settings.models_file))
    headers = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    r = falcon.testing.TestClient(app).simulate_options("/v1/chat/completions", headers=headers)
    assert r.status_code == 200
    assert r.headers.get("access-control-allow-origin") == allowed
