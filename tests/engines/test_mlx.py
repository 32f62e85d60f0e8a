"""MLX engine on the real (converted) Gemma 3 270M: streaming, stops, usage, cancellation, batching.

The key property of continuous batching: requests that join and leave a running batch get exactly
the text they would get alone (greedy, and seeded sampling too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines.base import Finish, GenerationRequest, TokenChunk
from services.worker.engines.mlx import MLXEngine
from tests.engines.factories.mlx import SLOTS, make_engine

pytestmark = pytest.mark.engine

PROMPT = "The capital of France is"
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
)


@pytest.fixture(scope="module")
def engine(gemma_path, tmp_path_factory) -> Iterator[MLXEngine]:
    with make_engine(gemma_path, tmp_path_factory.mktemp("mlx")) as eng:
        yield eng


def collect(
    engine: MLXEngine,
    prompt: str = PROMPT,
    *,
    cancelled: Callable[[], bool] = lambda: False,
    on_chunk: Callable[[TokenChunk], None] | None = None,
    **kw,
) -> tuple[str, Finish, list[TokenChunk]]:
    params = SamplingParams(**({"max_tokens": 6, "temperature": 0.0} | kw))
    chunks: list[TokenChunk] = []
    finishes: list[Finish] = []
    for item in engine.generate(GenerationRequest("t", prompt, params), cancelled):
        if isinstance(item, TokenChunk):
            chunks.append(item)
            if on_chunk:
                on_chunk(item)
        else:
            finishes.append(item)
    assert len(finishes) == 1
    return "".join(c.text for c in chunks), finishes[0], chunks


def wait_for(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_streams_tokens_with_exact_usage(engine):
    text, finish, chunks = collect(engine, max_tokens=6)
    assert text.strip() and len(chunks) > 1
    assert finish == Finish("length", engine.count_tokens(PROMPT) + 1, 6)  # +1: the BOS the tokenizer adds
    assert sum(c.tokens for c in chunks) == 6


def test_stop_string_is_cut_and_reported(engine):
    full, _, _ = collect(engine, max_tokens=10)
    stop = full.split()[3]
    text, finish, _ = collect(engine, max_tokens=10, stop=(stop, "never appears"))
    assert finish.reason == "stop"
    assert stop not in text and full.startswith(text)
    assert finish.completion_tokens < 10


def test_cancel_stops_and_leaves_the_batch(engine):
    chunks: list[TokenChunk] = []
    _, finish, _ = collect(engine, max_tokens=64, cancelled=lambda: len(chunks) >= 2, on_chunk=chunks.append)
    assert finish.reason == "stop" and finish.completion_tokens < 64
    assert wait_for(lambda: engine.running() == 0)


def test_abandoned_stream_leaves_the_batch(engine):
    params = SamplingParams(max_tokens=64, temperature=0.0)
    stream = engine.generate(GenerationRequest("t", PROMPT, params), lambda: False)
    assert isinstance(next(stream), TokenChunk)
    stream.close()
    assert wait_for(lambda: engine.running() == 0)


def run_staggered(engine: MLXEngine, jobs: list[dict]) -> tuple[list[str], int]:
    """Start each job once the previous one streams, so each joins a batch already decoding."""
    texts: list[str | None] = [None] * len(jobs)
    seen_running = [0]

    def one(i: int, first_token: threading.Event) -> None:
        def on_chunk(_: TokenChunk) -> None:
            seen_running[0] = max(seen_running[0], engine.running())
            first_token.set()

        texts[i] = collect(engine, on_chunk=on_chunk, **jobs[i])[0]
        first_token.set()

    threads = []
    for i in range(len(jobs)):
        started = threading.Event()
        thread = threading.Thread(target=one, args=(i, started), daemon=True)
        thread.start()
        threads.append(thread)
        started.wait(120)
    for thread in threads:
        thread.join(300)
    assert not any(t.is_alive() for t in threads)
    return [t or "" for t in texts], seen_running[0]


def test_interleaved_concurrent_streams_match_one_at_a_time(engine):
    jobs = [{"prompt": p, "max_tokens": 8} for p in PROMPTS[:SLOTS]]
    alone = [collect(engine, **job)[0] for job in jobs]
    together, most_running = run_staggered(engine, jobs)
    assert most_running >= 2, "the streams should have shared the batch"
    assert together == alone
    assert all(t.strip() for t in alone)


def test_seeded_sampling_repeats_inside_a_batch(engine):
    sampled = {"prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0.9, "top_p": 0.95, "seed": 11}
    alone = collect(engine, **sampled)[0]
    together, _ = run_staggered(engine, [{"prompt": PROMPTS[0], "max_tokens": 8}, sampled])
    assert together[1] == alone


def test_chat_falls_back_to_gemma_turns_and_context_comes_from_config(engine):
    messages = (ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Say hi"))
    prompt = engine.apply_chat_template(messages)
    assert prompt == "<start_of_turn>user\nBe brief.\n\nSay hi<end_of_turn>\n<start_of_turn>model\n"
    assert engine.context_length() == 32768
    assert engine.capacity() == SLOTS


def test_a_prompt_seen_before_is_prefilled_from_the_prompt_cache(engine):
    """As in mlx_lm.server: a finished sequence's KV cache is kept, and a prompt it starts with (the same
    prompt again, the next turn of a chat) skips that prefill; greedy text stays the same."""
    prompt = "Prompt cache check: the longest rivers of Europe are"
    first, finish, _ = collect(engine, prompt, max_tokens=5)
    before = engine._loop.cached_tokens
    again, _, _ = collect(engine, prompt, max_tokens=5)
    assert again == first
    assert engine._loop.cached_tokens - before == finish.prompt_tokens - 1, "all but the last prompt token"
    follow_up = prompt + first + " and"
    extended, _, _ = collect(engine, follow_up, max_tokens=3)
    assert extended.strip()
    assert engine._loop.cached_tokens - before > 2 * (finish.prompt_tokens - 1), "the longer prompt reused it too"
