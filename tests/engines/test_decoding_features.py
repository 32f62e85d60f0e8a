"""response_format, logprobs, tools and the vendor extras on every engine here (Gemma 3 270M): each is
either served or refused with a 400 naming the parameter, never silently dropped.

Tools on a model with a tools template are tested through the whole stack (tests/e2e/stack/
test_tools_and_structured.py); here a forced tool choice is checked on the engine that serves tools.
"""

from __future__ import annotations

import json

import pytest

from services.common.errors import InvalidRequest
from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines.base import Engine, Finish, GenerationRequest, TokenChunk
from services.worker.engines.features import ALL

SERVED = {
    "llama_cpp": {"response_format", "logprobs", "top_logprobs", "top_k", "min_p", "repetition_penalty"},
    "llama_server": set(ALL),
    "mlx": set(),
}
"""What each engine serves; the README's parameter table says the same."""
COLOR = {
    "type": "json_schema",
    "json_schema": {
        "name": "color",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
            "required": ["color"],
            "additionalProperties": False,
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}},
    },
}
USES = {
    "tools": {"tools": (WEATHER,), "tool_choice": "auto"},
    "response_format": {"response_format": COLOR},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "top_k": {"top_k": 5},
    "min_p": {"min_p": 0.1},
    "repetition_penalty": {"repetition_penalty": 1.2},
}

pytestmark = pytest.mark.engine


def run(engine: Engine, prompt: str = "The sky is", **kw) -> tuple[str, Finish, list[TokenChunk]]:
    params = SamplingParams(**({"max_tokens": 24, "temperature": 0.0, "seed": 7} | kw))
    items = list(engine.generate(GenerationRequest("t", prompt, params), lambda: False))
    chunks = [i for i in items if isinstance(i, TokenChunk)]
    (finish,) = [i for i in items if isinstance(i, Finish)]
    return "".join(c.text for c in chunks), finish, chunks


@pytest.mark.parametrize("feature", sorted(USES))
def test_a_feature_is_served_or_refused_naming_it(engine: Engine, feature: str) -> None:
    if feature == "tools" and engine.name == "llama_server":
        pytest.skip("Gemma's llama-server runs its built-in template without Jinja; tools are tested on SmolLM2")
    if feature in SERVED[engine.name]:
        _, finish, _ = run(engine, **USES[feature])
        assert finish.completion_tokens > 0
    else:
        with pytest.raises(InvalidRequest) as refused:
            run(engine, **USES[feature])
        first = "logprobs" if feature == "top_logprobs" else feature  # top_logprobs needs logprobs, refused first
        assert refused.value.param == first and refused.value.status == 400


def test_a_json_schema_is_always_met(engine: Engine) -> None:
    if "response_format" not in SERVED[engine.name]:
        pytest.skip(f"{engine.name} refuses response_format (tested above)")
    for prompt in ("The sky is", "My favourite color:", "{"):
        text, finish, _ = run(engine, prompt, max_tokens=40, response_format=COLOR)
        assert finish.reason == "stop", text
        assert json.loads(text)["color"] in ("red", "green", "blue")


def test_logprobs_match_the_tokens(engine: Engine) -> None:
    if "logprobs" not in SERVED[engine.name]:
        pytest.skip(f"{engine.name} refuses logprobs (tested above)")
    text, finish, chunks = run(engine, max_tokens=5, logprobs=True, top_logprobs=3)
    entries = [e for c in chunks for e in c.logprobs or ()]
    assert len(entries) == finish.completion_tokens == 5
    assert "".join(e["token"] for e in entries) == text
    assert all(len(e["top_logprobs"]) == 3 and e["logprob"] <= 0 for e in entries)
    for e in entries:  # greedy: each token is its distribution's most likely, alternatives in descending order
        assert e["top_logprobs"][0]["token"] == e["token"] and e["top_logprobs"][0]["logprob"] == e["logprob"]
        assert e["top_logprobs"][0]["logprob"] > e["top_logprobs"][2]["logprob"]
    assert len({round(e["logprob"], 4) for e in entries}) > 1  # real distributions, not a uniform placeholder
    assert set(entries[0]) == {"token", "logprob", "bytes", "top_logprobs"}  # OpenAI's keys, no token ids


def test_tools_on_a_template_without_them_are_a_400(engine: Engine) -> None:
    if engine.name != "llama_server":
        pytest.skip("only the sidecar engines serve tools")
    messages = (ChatMessage(role="user", content="Weather in Rome?"),)
    params = SamplingParams(
        max_tokens=40, temperature=0.0, response_format=None, tools=(WEATHER,),
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    # Gemma's llama-server has no Jinja, so tools in the body are its error: a 400 naming tools, not a 500
    with pytest.raises(InvalidRequest) as refused:
        list(engine.generate(GenerationRequest("t", "", params, messages), lambda: False))
    assert refused.value.param == "tools"
