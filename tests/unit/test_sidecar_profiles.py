"""The sidecar profiles (engines/profiles.py): an engine takes its profile from its name once, when built, and the
same request leaves in each sidecar's own words (payload.py). vLLM cannot run here, so its side is checked as JSON;
llama-server's answers to these bodies are checked live in tests/engines/test_engine_fields.py."""

from __future__ import annotations

import pytest

from services.common.jobs import ChatMessage, SamplingParams
from services.common.settings import Settings
from services.worker.engines import payload
from services.worker.engines.base import EngineUnavailable, GenerationRequest
from services.worker.engines.openai_http import OpenAIHTTPEngine
from services.worker.engines.profiles import PROFILES, profile_for

SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}


def engine(name: str) -> OpenAIHTTPEngine:
    return OpenAIHTTPEngine("http://127.0.0.1:9", name=name, concurrency=1, context=512, timeout=5, upstream_model="m")


def body(name: str, chat: bool = False, **kw) -> dict:
    messages = (ChatMessage(role="user", content="hi"),) if chat else ()
    request = GenerationRequest("t", "" if chat else "Say", SamplingParams(max_tokens=8, **kw), messages)
    built = engine(name)
    return payload.body(request, 8, built.profile, built.upstream_model)


def test_an_engine_takes_its_profile_from_its_name_when_built() -> None:
    for name, profile in PROFILES.items():
        assert engine(name).profile is profile
    with pytest.raises(EngineUnavailable, match="llama_server, vllm"):
        engine("tgi")
    with pytest.raises(EngineUnavailable):
        profile_for("llama_cpp")  # in-process: no sidecar profile


def test_profiles_name_settings_that_exist_and_a_route_for_each_served_feature() -> None:
    for profile in PROFILES.values():
        assert profile.url_setting in Settings.model_fields
        assert profile.key_setting is None or profile.key_setting in Settings.model_fields
        assert ("suffix" in profile.supports) == (profile.infill_route is not None)


def test_sampling_extras_in_each_sidecars_names() -> None:
    llama = body("llama_server", top_k=-1, repetition_penalty=1.1, temperature=0.7)
    vllm = body("vllm", top_k=-1, repetition_penalty=1.1, temperature=0.7)
    assert (llama["top_k"], llama["repeat_penalty"], llama["min_p"]) == (0, 1.1, 0.0)  # off: 0; its min_p off too
    assert (vllm["top_k"], vllm["repetition_penalty"]) == (-1, 1.1) and "min_p" not in vllm
    assert "repeat_penalty" not in vllm and "repetition_penalty" not in llama
    assert body("llama_server", temperature=0.0)["top_k"] == 1  # greedy: one candidate, no pass over the vocabulary
    assert "top_k" not in body("vllm", temperature=0.0)


def test_running_counts_echo_and_json_schema_as_each_sidecar_reads_them() -> None:
    llama = body("llama_server", echo=True, response_format=SCHEMA)
    vllm = body("vllm", echo=True, response_format=SCHEMA)
    assert llama["timings_per_token"] is True and llama["stream_options"] == {"include_usage": True}
    assert vllm["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert "timings_per_token" not in vllm
    assert "echo" not in llama and vllm["echo"] is True  # llama-server ignores it: the engine echoes the text
    assert llama["json_schema"] == {"type": "array"} and "json_schema" not in vllm
    assert "json_schema" not in body("llama_server", chat=True, response_format=SCHEMA)  # its chat route reads it


def test_own_fields_go_only_to_the_sidecar_that_reads_them() -> None:
    fields = {"grammar": 'root ::= "a"', "cache_prompt": False, "guided": {"guided_regex": "[0-9]+"}}
    llama, vllm = body("llama_server", **fields), body("vllm", **fields)
    assert (llama["grammar"], llama["cache_prompt"]) == ('root ::= "a"', False) and "guided_regex" not in llama
    assert vllm["guided_regex"] == "[0-9]+" and "grammar" not in vllm and "cache_prompt" not in vllm
    assert "grammar" not in body("llama_server", grammar="")


def test_tokenize_bodies() -> None:
    assert PROFILES["llama_server"].tokenize_body("a", "m", False) == {
        "content": "a",
        "add_special": False,
        "parse_special": True,
    }
    assert PROFILES["vllm"].tokenize_body("a", "m", True) == {"model": "m", "prompt": "a", "add_special_tokens": True}
