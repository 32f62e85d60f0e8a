"""`echo` on legacy completions, the pure parts: validation, the job's field, which engine refuses it and
how, the echoed chunk's place among an engine's items, and OpenAI's shapes of an echoed prompt's logprobs
(null first token, offsets from the prompt's first character) in bodies, chunks and events."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from services.api.routes import completion_shapes as shapes
from services.api.routes.completions import _decoding
from services.common import events
from services.common.errors import InvalidRequest
from services.common.events import Usage
from services.common.jobs import Job, SamplingParams
from services.common.schemas import CompletionRequest, parse
from services.worker.engines import echo, features
from services.worker.engines.base import Finish, GenerationItem, GenerationRequest, TokenChunk
from services.worker.engines.llama_cpp import FEATURES as LLAMA_CPP
from services.worker.engines.mlx import FEATURES as MLX
from services.worker.engines.profiles import PROFILES
from services.worker.engines.upstream import logprob_entries


def completion(**extra) -> CompletionRequest:
    return parse(CompletionRequest, json.dumps({"model": "m", "prompt": "Say", **extra}).encode())


def entry(token: str, logprob: float | None, top: dict[str, float] | None = None) -> dict:
    tops = None if top is None else [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top.items()]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": tops}


ECHOED = (echo.first_entry("Say", b"Say"), entry(" hi", -2.5, {" it": -1.0, " hi": -2.5}))
GENERATED = (entry("!", -0.25, {"!": -0.25, ".": -1.5}),)


def test_echo_is_accepted_and_reaches_the_job() -> None:
    assert completion(echo=True).echo is True
    assert completion(echo=None).echo is False and completion().echo is False
    decoding = _decoding(completion(echo=True, logprobs=2))
    assert decoding == {"logprobs": True, "top_logprobs": 2, "echo": True}
    params = SamplingParams(max_tokens=4, **decoding)
    job = Job(request_id="r", model="m", kind="completion", prompt="Say", params=params, accepted_at=0, deadline=1)
    assert Job.from_wire(json.loads(json.dumps(job.to_wire()))).params.echo is True
    with pytest.raises(InvalidRequest) as exc:
        completion(echo="yes")
    assert exc.value.param == "echo"
    # `suffix` now parses: llama-server fills in the middle through /infill where the GGUF has FIM tokens, and
    # every other case is a 400 naming it from the engine (tests/unit/test_engine_fields.py)
    assert completion(suffix="after").suffix == "after"


def test_each_engine_serves_echo_or_refuses_it_by_name() -> None:
    text = SamplingParams(max_tokens=1, echo=True)
    scored = SamplingParams(max_tokens=1, echo=True, logprobs=True, top_logprobs=1)
    assert features.used(text) == ["echo"]
    assert features.used(scored) == ["logprobs", "top_logprobs", "echo", "echo_logprobs"]
    sidecars = [(name, profile.supports) for name, profile in PROFILES.items()]
    for engine, served in (("llama_cpp", LLAMA_CPP), ("mlx", MLX), *sidecars):
        features.require(text, engine, served)  # the text is known: every engine echoes it
    features.require(scored, "llama_cpp", LLAMA_CPP)
    features.require(scored, "vllm", PROFILES["vllm"].supports)
    with pytest.raises(InvalidRequest) as exc:
        features.require(scored, "llama_server", PROFILES["llama_server"].supports)
    refused = exc.value
    assert (refused.status, refused.param, refused.code) == (400, "echo", "unsupported_parameter")
    assert "'echo'" in refused.message and "logprobs" in refused.message and "llama_server" in refused.message
    with pytest.raises(InvalidRequest) as exc:
        features.require(scored, "mlx", MLX)
    assert exc.value.param == "logprobs"  # MLX gives no logprobs at all: that is what it names first


def items(first: Exception | None = None) -> Iterator[GenerationItem]:
    if first is not None:
        raise first
    yield TokenChunk("!", 1)
    yield Finish("length", 2, 1)


def test_the_echoed_chunk_comes_just_before_the_first_item() -> None:
    request = GenerationRequest("r", "Say hi", SamplingParams(max_tokens=1, echo=True))
    out = list(echo.text_only(request, items()))
    assert out == [TokenChunk("Say hi", 0), TokenChunk("!", 1), Finish("length", 2, 1)]
    plain = GenerationRequest("r", "Say hi", SamplingParams(max_tokens=1))
    assert list(echo.text_only(plain, items())) == [TokenChunk("!", 1), Finish("length", 2, 1)]
    with pytest.raises(InvalidRequest):  # an error before the first item: nothing was sent, so it is the status
        next(echo.text_only(request, items(InvalidRequest("too long", param="messages"))))
    assert echo.chunk("Say", ()).logprobs is None  # no entries: a plain text delta


def test_an_echoed_prompt_in_openai_legacy_logprobs() -> None:
    lp = shapes.text_logprobs((*ECHOED, *GENERATED))
    assert lp == {
        "tokens": ["Say", " hi", "!"],
        "token_logprobs": [None, -2.5, -0.25],
        "top_logprobs": [None, {" it": -1.0, " hi": -2.5}, {"!": -0.25, ".": -1.5}],
        "text_offset": [0, 3, 6],
    }
    assert shapes.text_logprobs([entry("x", -1.0, None)])["top_logprobs"] == [{}]  # generated, no alternatives
    vllm = {"tokens": ["Say", " hi"], "token_logprobs": [None, -2.5], "top_logprobs": [None, {" hi": -2.5}]}
    assert shapes.text_logprobs(logprob_entries(vllm))["top_logprobs"] == [None, {" hi": -2.5}]  # vLLM's echo
    body = shapes.text_completion("cmpl-1", 1, "m", "Say hi!", "length", Usage(3, 1), [*ECHOED, *GENERATED])
    assert body["choices"][0]["text"] == "Say hi!" and body["choices"][0]["logprobs"] == lp
    assert json.loads(json.dumps(body))["choices"][0]["logprobs"]["top_logprobs"][0] is None  # JSON null


def test_a_stream_sends_the_prompt_first_and_offsets_go_on_from_it() -> None:
    head = events.Delta("Say hi", 0, logprobs=ECHOED)
    assert events.decode(events.encode(head)) == head  # null values survive the Redis stream
    first = shapes.text_chunk("c", 1, "m", head.text, None, False, shapes.text_logprobs(head.logprobs))
    assert first["choices"][0]["text"] == "Say hi"
    assert first["choices"][0]["logprobs"]["token_logprobs"][0] is None
    nxt = shapes.text_logprobs(GENERATED, offset=len(head.text))
    assert nxt["text_offset"] == [6]
