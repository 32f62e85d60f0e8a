"""The engines' own request fields (common/engine_fields.py) reach the engines that take them, or are a 400 naming
the field: the upstream payloads built for llama-server and vLLM (no GPU here: vLLM's is checked as JSON), and the
real llama-server and in-process llama.cpp on Gemma 3 270M for what they answer (a bad grammar, FIM without FIM
tokens, a grammar obeyed, more than four stop strings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import InvalidRequest
from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines import features, llama_cpp, mlx, payload
from services.worker.engines.base import Finish, GenerationRequest, TokenChunk
from services.worker.engines.openai_http import OpenAIHTTPEngine
from services.worker.engines.payload import infill_body, infill_event
from services.worker.engines.profiles import PROFILES
from tests.engines.factories import llama_cpp as in_process_factory
from tests.engines.factories import llama_server as sidecar_factory

pytestmark = pytest.mark.engine

CHAT = (ChatMessage(role="user", content="Is the sky blue?"),)
YES_NO = 'root ::= "yes" | "no"'
BAD_GRAMMAR = "root ::= ((("


def params(**kw) -> SamplingParams:
    return SamplingParams(**({"max_tokens": 8, "temperature": 0.0, "seed": 7} | kw))


def body(name: str, prompt: str = "", messages: tuple[ChatMessage, ...] = CHAT, **kw) -> dict:
    """The body the engine named `name` sends upstream (payload.body with the profile it looks up)."""
    engine = OpenAIHTTPEngine("http://127.0.0.1:9", name=name, concurrency=1, context=512, timeout=5)
    return payload.body(GenerationRequest("t", prompt, params(**kw), messages), 8, engine.profile, None)


def run(engine, prompt: str = "Answer:", messages: tuple[ChatMessage, ...] = (), **kw) -> tuple[str, Finish]:
    chunks, finishes = [], []
    for item in engine.generate(GenerationRequest("t", prompt, params(**kw), messages), lambda: False):
        (chunks if isinstance(item, TokenChunk) else finishes).append(item)
    return "".join(c.text for c in chunks), finishes[0]


# payloads ---------------------------------------------------------------------------------------------------


def test_llama_server_gets_its_own_fields_under_its_names() -> None:
    sent = body("llama_server", grammar=YES_NO, cache_prompt=False, continue_final_message=True)
    assert sent["grammar"] == YES_NO
    assert sent["cache_prompt"] is False
    assert sent["continue_final_message"] is True
    assert "add_generation_prompt" not in sent  # not sent: the template's default


def test_vllm_gets_guided_decoding_and_structured_outputs_as_sent() -> None:
    guided = {
        "guided_json": {"type": "object"},
        "guided_regex": "[0-9]+",
        "guided_choice": ["a", "b"],
        "guided_grammar": "root ::= x",
        "structured_outputs": {"choice": ["a", "b"]},
    }
    sent = body("vllm", guided=guided, add_generation_prompt=False, continue_final_message=True)
    assert {k: sent[k] for k in guided} == guided
    assert (sent["add_generation_prompt"], sent["continue_final_message"]) == (False, True)
    assert "grammar" not in body("llama_server", guided=None)


def test_infill_payload_and_native_chunks() -> None:
    sent = infill_body(body("llama_server", prompt="def f(x):\n    ", messages=(), stop=("\n\n",)), "\n    return y")
    assert sent["input_prefix"] == "def f(x):\n    " and sent["input_suffix"] == "\n    return y"
    assert sent["n_predict"] == 8 and sent["stream"] is True and sent["stop"] == ["\n\n"]
    assert "prompt" not in sent and "max_tokens" not in sent
    assert infill_event({"content": "y = x", "stop": False, "timings": {"predicted_n": 2}}) == {
        "choices": [{"text": "y = x", "finish_reason": None}],
        "timings": {"predicted_n": 2},
    }
    last = infill_event(
        {"content": "", "stop": True, "stop_type": "limit", "tokens_predicted": 8, "tokens_evaluated": 9}
    )
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"] == {"prompt_tokens": 9, "completion_tokens": 8}


@pytest.mark.parametrize(
    ("engine", "supported", "field", "value"),
    [
        ("vllm", PROFILES["vllm"].supports, "grammar", YES_NO),
        ("vllm", PROFILES["vllm"].supports, "suffix", "x"),
        ("vllm", PROFILES["vllm"].supports, "cache_prompt", False),
        ("llama_server", PROFILES["llama_server"].supports, "guided", {"guided_regex": "a"}),
        ("llama_cpp", llama_cpp.FEATURES, "continue_final_message", True),
        ("llama_cpp", llama_cpp.FEATURES, "suffix", "x"),
        ("llama_cpp", llama_cpp.FEATURES, "guided", {"structured_outputs": {}}),
        ("mlx", mlx.FEATURES, "grammar", YES_NO),
        ("mlx", mlx.FEATURES, "cache_prompt", False),
        ("mlx", mlx.FEATURES, "add_generation_prompt", False),
        ("mlx", mlx.FEATURES, "suffix", "x"),
    ],
)
def test_what_an_engine_does_not_take_is_a_400_naming_it(engine, supported, field, value) -> None:
    with pytest.raises(InvalidRequest) as err:
        features.require(params(**{field: value}), engine, supported)
    assert err.value.param == (next(iter(value)) if field == "guided" else field)
    assert err.value.code == "unsupported_parameter"


def test_defaults_and_true_cache_prompt_are_not_refused_anywhere() -> None:
    for supported in (mlx.FEATURES, llama_cpp.FEATURES, *(profile.supports for profile in PROFILES.values())):
        features.require(params(cache_prompt=True, add_generation_prompt=True), "any", supported)


# the real llama-server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sidecar(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIHTTPEngine]:
    with sidecar_factory.make_engine(gemma_path, tmp_path_factory.mktemp("llama-server")) as engine:
        yield engine


def test_llama_server_obeys_a_grammar_and_names_a_bad_one(sidecar: OpenAIHTTPEngine) -> None:
    assert run(sidecar, grammar=YES_NO)[0] in ("yes", "no")
    assert run(sidecar, messages=CHAT, grammar=YES_NO)[0] in ("yes", "no")
    with pytest.raises(InvalidRequest) as err:
        run(sidecar, grammar=BAD_GRAMMAR)
    assert err.value.param == "grammar"


def test_llama_server_suffix_without_fim_tokens_is_a_400_naming_suffix(sidecar: OpenAIHTTPEngine) -> None:
    with pytest.raises(InvalidRequest) as err:
        run(sidecar, prompt="def f(x):\n    ", suffix="\n    return y")
    assert err.value.param == "suffix" and "FIM tokens" in err.value.message


def test_llama_server_takes_sixteen_stops_and_no_prompt_cache(sidecar: OpenAIHTTPEngine) -> None:
    stops = (*(f"<stop{i}>" for i in range(15)), " 5")
    text, finish = run(sidecar, prompt="1 2 3 4", stop=stops, max_tokens=12, cache_prompt=False)
    assert " 5" not in text and finish.reason == "stop"


# in-process llama.cpp --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def in_process(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory):
    with in_process_factory.make_engine(gemma_path, tmp_path_factory.mktemp("llama-cpp")) as engine:
        yield engine


def test_in_process_grammar_obeyed_and_a_bad_one_is_a_400_not_a_crash(in_process) -> None:
    assert run(in_process, grammar=YES_NO, cache_prompt=False)[0] in ("yes", "no")
    with pytest.raises(InvalidRequest) as err:
        run(in_process, grammar=BAD_GRAMMAR)
    assert err.value.param == "grammar"
    assert run(in_process, grammar=YES_NO)[0] in ("yes", "no")  # still alive
