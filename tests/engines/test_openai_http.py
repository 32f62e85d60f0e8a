"""OpenAIHTTPEngine against a real llama-server serving Gemma 3 270M on loopback (no mocks).

The shared conformance suite runs the engine-neutral cases; these are the sidecar-specific ones:
usage equal to the sidecar's own /tokenize, chat through the upstream template, cancellation freeing
the sidecar's slot, error mapping when the sidecar is down or dies, and many streams at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.errors import InvalidRequest, ServiceUnavailable
from services.common.jobs import ChatMessage, SamplingParams
from services.common.ports import free_port
from services.worker.engines.base import (
    ContextLengthExceeded,
    EngineError,
    Finish,
    GenerationRequest,
    TokenChunk,
)
from services.worker.engines.factory import EngineUnavailable
from services.worker.engines.llama_server_process import LlamaServerCommand
from services.worker.engines.openai_http import OpenAIHTTPEngine
from tests.engines.factories.llama_server import SLOT_CONTEXT, engine_for, llama_server

pytestmark = pytest.mark.engine

STORY = "Once upon a time, in a small village by the sea, there lived"
CHAT = (ChatMessage(role="system", content="Answer briefly."), ChatMessage(role="user", content="Name a color."))


@pytest.fixture(scope="module")
def server(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServerCommand]:
    with llama_server(gemma_path, tmp_path_factory.mktemp("llama-server")) as (cmd, _):
        yield cmd


@pytest.fixture(scope="module")
def engine(server: LlamaServerCommand) -> Iterator[OpenAIHTTPEngine]:
    eng = engine_for(server, concurrency=8)
    eng.load()
    yield eng
    eng.unload()


def params(**kw) -> SamplingParams:
    return SamplingParams(**({"max_tokens": 16, "temperature": 0.0, "seed": 7} | kw))


def run(
    engine: OpenAIHTTPEngine,
    prompt: str = STORY,
    *,
    messages: tuple[ChatMessage, ...] = (),
    cancel_after: int | None = None,
    **kw,
) -> tuple[str, Finish, list[TokenChunk]]:
    chunks: list[TokenChunk] = []
    finishes: list[Finish] = []

    def cancelled() -> bool:
        return cancel_after is not None and len(chunks) >= cancel_after

    for item in engine.generate(GenerationRequest("t", prompt, params(**kw), messages), cancelled):
        (chunks if isinstance(item, TokenChunk) else finishes).append(item)
    assert len(finishes) == 1
    return "".join(c.text for c in chunks), finishes[0], chunks


def upstream_tokens(server: LlamaServerCommand, text: str) -> int:
    """The sidecar's own count of a prompt as it evaluates it (BOS included)."""
    body = {"content": text, "add_special": True, "parse_special": True}
    return len(httpx.post(f"{server.url}/tokenize", json=body, timeout=10).json()["tokens"])


def busy_slots(server: LlamaServerCommand) -> int:
    return sum(bool(s["is_processing"]) for s in httpx.get(f"{server.url}/slots", timeout=5).json())


def test_load_learns_the_model_and_the_per_slot_context(engine: OpenAIHTTPEngine) -> None:
    assert engine.upstream_model == "gemma-3-270m"
    assert engine.context_length() == SLOT_CONTEXT
    assert engine.capacity() == 8


def test_completion_streams_with_usage_from_the_tokenizer(engine: OpenAIHTTPEngine, server: LlamaServerCommand) -> None:
    text, finish, chunks = run(engine, max_tokens=24)
    assert text.strip() and len(chunks) > 1
    assert finish.prompt_tokens == upstream_tokens(server, STORY)
    assert finish.completion_tokens == sum(c.tokens for c in chunks)
    assert finish.completion_tokens <= 24
    assert engine.count_tokens(STORY) == finish.prompt_tokens - 1  # without the BOS the sidecar adds


def test_chat_streams_through_the_upstream_template(engine: OpenAIHTTPEngine, server: LlamaServerCommand) -> None:
    prompt = engine.apply_chat_template(CHAT)
    assert "<start_of_turn>user" in prompt and "Answer briefly." in prompt and "Name a color." in prompt
    assert prompt.rstrip().endswith("<start_of_turn>model")
    _, finish, chunks = run(engine, prompt, messages=CHAT, max_tokens=12)
    assert finish.completion_tokens == sum(c.tokens for c in chunks) >= 1
    assert finish.prompt_tokens == upstream_tokens(server, prompt)


def test_max_tokens_ends_with_length(engine: OpenAIHTTPEngine) -> None:
    _, finish, chunks = run(engine, max_tokens=5)
    assert (finish.reason, finish.completion_tokens, sum(c.tokens for c in chunks)) == ("length", 5, 5)


def test_stop_sequence_is_cut_and_not_sent(engine: OpenAIHTTPEngine) -> None:
    full, _, _ = run(engine, max_tokens=24)
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[3]
    text, finish, chunks = run(engine, max_tokens=24, stop=(stop,))
    assert finish.reason == "stop"
    assert stop not in text and full.startswith(text)
    assert finish.completion_tokens == sum(c.tokens for c in chunks)


def test_greedy_and_seeded_sampling_are_deterministic(engine: OpenAIHTTPEngine) -> None:
    assert run(engine)[0] == run(engine)[0]
    assert run(engine, temperature=0.9, seed=1234)[0] == run(engine, temperature=0.9, seed=1234)[0]


LONG_PROMPT = "one two three four five six seven eight nine ten " * 98  # about 1000 tokens


def test_context_overflow_refused_when_explicit_clamped_when_defaulted(engine: OpenAIHTTPEngine) -> None:
    with pytest.raises(ContextLengthExceeded):
        run(engine, max_tokens=SLOT_CONTEXT)
    _, finish, _ = run(engine, LONG_PROMPT, max_tokens=SLOT_CONTEXT, max_tokens_explicit=False)
    assert finish.reason == "length"
    assert finish.prompt_tokens + finish.completion_tokens == SLOT_CONTEXT


def test_an_explicit_max_tokens_past_the_context_is_refused_before_any_text(engine: OpenAIHTTPEngine) -> None:
    """No /tokenize first: the prompt's size comes with the first token, whose text is then held back."""
    items = []
    with pytest.raises(ContextLengthExceeded) as caught:
        for item in engine.generate(GenerationRequest("t", LONG_PROMPT, params(max_tokens=100)), lambda: False):
            items.append(item)
    assert items == [] and caught.value.param == "max_tokens"
    assert "maximum context length is 1024" in caught.value.message


def test_a_prompt_past_the_context_is_refused(engine: OpenAIHTTPEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        run(engine, LONG_PROMPT * 2, max_tokens_explicit=False)
    assert caught.value.param == "messages" and caught.value.status == 400


def test_one_http_call_per_request(engine: OpenAIHTTPEngine) -> None:
    """No /apply-template, no /tokenize: the completion call alone, for chat and completion."""
    calls: list[str] = []
    assert engine._client is not None and engine._streams is not None
    streams, lines = engine._streams, engine._streams.lines
    engine._client.event_hooks["request"].append(lambda r: calls.append(r.url.path))
    streams.lines = lambda path, *args, **kw: calls.append(path) or lines(path, *args, **kw)  # type: ignore[method-assign]
    try:
        _, chat, _ = run(engine, "", messages=CHAT, max_tokens=4)
        _, completion, _ = run(engine, max_tokens=4)
    finally:
        engine._client.event_hooks["request"].pop()
        del streams.lines
    assert calls == ["/v1/chat/completions", "/v1/completions"]
    assert chat.prompt_tokens > 10 and completion.prompt_tokens > 10


def test_cancel_mid_stream_frees_the_sidecar_slot(engine: OpenAIHTTPEngine, server: LlamaServerCommand) -> None:
    started = time.monotonic()
    _, finish, chunks = run(engine, max_tokens=900, cancel_after=3)
    assert finish.reason == "stop"
    assert finish.completion_tokens == sum(c.tokens for c in chunks) < 900
    deadline = time.monotonic() + 5
    while busy_slots(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy_slots(server) == 0, "the cancelled request still holds a llama-server slot"
    _, quick, _ = run(engine, max_tokens=4)
    assert quick.completion_tokens == 4
    assert time.monotonic() - started < 15


def many_at_once(engine: OpenAIHTTPEngine, n: int, max_tokens: int) -> list[Finish | BaseException | None]:
    results: list[Finish | BaseException | None] = [None] * n

    def one(i: int) -> None:
        try:
            results[i] = run(engine, f"{STORY} {i}", max_tokens=max_tokens, temperature=0.8, seed=i)[1]
        except BaseException as exc:  # reported by the caller's assertion, with the others
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def test_eight_concurrent_generations_all_complete(engine: OpenAIHTTPEngine) -> None:
    results = many_at_once(engine, 8, 12)
    assert all(isinstance(r, Finish) and 1 <= r.completion_tokens <= 12 for r in results), results


def test_thirty_two_streams_share_one_client(server: LlamaServerCommand) -> None:
    """More streams than sidecar slots: the pool holds them all open while llama-server queues them."""
    wide = engine_for(server, concurrency=32)
    wide.load()
    results = many_at_once(wide, 32, 2)
    wide.unload()
    assert all(isinstance(r, Finish) and 1 <= r.completion_tokens <= 2 for r in results), results


def test_upstream_400_becomes_invalid_request(engine: OpenAIHTTPEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        engine._json("POST", "/v1/completions", {"model": engine.upstream_model})
    assert caught.value.status == 400 and caught.value.message


def test_no_sidecar_fails_load_clearly() -> None:
    engine = OpenAIHTTPEngine(
        f"http://127.0.0.1:{free_port()}", name="llama_server", concurrency=1, context=512, timeout=5
    )
    with pytest.raises(EngineUnavailable, match="does not answer"):
        engine.load()


def test_sidecar_gone_or_dying_is_an_api_error(gemma_path: Path, tmp_path: Path) -> None:
    """Killed mid-stream: EngineError (500); gone before the request: ServiceUnavailable (503). Never httpx's."""
    with llama_server(gemma_path, tmp_path, slots=1) as (cmd, proc):
        engine = engine_for(cmd, concurrency=1)
        engine.load()
        stream = engine.generate(GenerationRequest("t", STORY, params(max_tokens=900)), lambda: False)
        assert isinstance(next(stream), TokenChunk)
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started
        proc.wait(10)
        with pytest.raises(EngineError):
            list(stream)
        with pytest.raises(ServiceUnavailable):
            run(engine)
        engine.unload()


def test_a_flowing_stream_is_read_in_ticks(server: LlamaServerCommand) -> None:
    """Paced, a stream keeps every token and its usage, read in a few ticks: the runner's flush runs before
    each tick's sleep. A 200 ms tick keeps Gemma's ~15 ms tokens flowing on a loaded box too. (Greedy text
    is not compared with an unpaced run: llama-server's own answers to one prompt differ between runs.)"""
    paced = engine_for(server, concurrency=2, read_tick=0.2)
    paced.load()
    flushes: list[int] = []
    try:
        tell = lambda sleep: sleep and flushes.append(1)  # noqa: E731
        request = GenerationRequest("t", STORY, params(max_tokens=48), before_wait=tell)
        items = list(paced.generate(request, lambda: False))
    finally:
        paced.unload()
    chunks = [i for i in items if isinstance(i, TokenChunk)]
    finish = items[-1]
    assert isinstance(finish, Finish) and finish.reason == "length"
    assert sum(c.tokens for c in chunks) == finish.completion_tokens == 48
    assert finish.prompt_tokens == upstream_tokens(server, STORY)
    assert len("".join(c.text for c in chunks).split()) >= 20
    assert 1 <= len(flushes) <= 12, len(flushes)  # read as it came, a flush would never be asked for
