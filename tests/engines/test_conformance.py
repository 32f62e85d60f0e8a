"""The same cases against every engine available here (llama.cpp in-process, llama-server, MLX).

Each engine has a factory in tests/engines/factories/<name>.py yielding a loaded engine on Gemma 3 270M.
"""

from __future__ import annotations

import threading

import pytest

from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines.base import ContextLengthExceeded, Engine, Finish, GenerationRequest, TokenChunk

PROMPT = "The three primary colors are"

pytestmark = pytest.mark.engine


def params(**kw) -> SamplingParams:
    base = {"max_tokens": 12, "temperature": 0.0, "seed": 7}
    return SamplingParams(**(base | kw))


def run(engine: Engine, prompt: str = PROMPT, cancel_after: int | None = None, **kw):
    chunks: list[TokenChunk] = []
    finishes: list[Finish] = []

    def cancelled() -> bool:
        return cancel_after is not None and len(chunks) >= cancel_after

    for item in engine.generate(GenerationRequest("t", prompt, params(**kw)), cancelled):
        (chunks if isinstance(item, TokenChunk) else finishes).append(item)
    assert len(finishes) == 1, "every generation ends with exactly one Finish"
    return "".join(c.text for c in chunks), finishes[0], chunks


def test_generates_text_with_exact_usage(engine):
    text, finish, chunks = run(engine)
    assert text.strip()
    assert finish.completion_tokens == sum(c.tokens for c in chunks)
    assert finish.prompt_tokens >= engine.count_tokens(PROMPT)
    assert len(chunks) > 1, "tokens arrive as they are generated, not in one piece"


def test_max_tokens_gives_length(engine):
    _, finish, _ = run(engine, max_tokens=5)
    assert (finish.reason, finish.completion_tokens) == ("length", 5)


def test_greedy_is_deterministic(engine):
    assert run(engine)[0] == run(engine)[0]


def test_stop_sequence_cuts_before_it(engine):
    full, _, _ = run(engine, max_tokens=16)
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    text, finish, _ = run(engine, max_tokens=16, stop=(stop,))
    assert finish.reason == "stop"
    assert stop not in text and full.startswith(text)


def test_cancel_stops_between_tokens(engine):
    _, finish, _ = run(engine, max_tokens=64, cancel_after=2)
    assert finish.reason == "stop"
    assert finish.completion_tokens < 64


def test_chat_template_carries_the_turns(engine):
    prompt = engine.apply_chat_template(
        (ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Say hi"))
    )
    if prompt:  # HTTP engines may template upstream
        assert "Say hi" in prompt and "Be brief." in prompt
    _, finish, _ = run(engine, prompt or "Say hi", max_tokens=8)
    assert finish.completion_tokens >= 1


def test_explicit_max_tokens_past_the_context_is_refused(engine):
    with pytest.raises(ContextLengthExceeded):
        run(engine, max_tokens=engine.context_length() + 1)


def test_capacity_many_at_once(engine):
    n = min(engine.capacity(), 8)
    results: list = [None] * n

    def one(i: int) -> None:
        results[i] = run(engine, max_tokens=6)[1]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.completion_tokens == 6 for r in results)
