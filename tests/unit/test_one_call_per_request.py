"""OpenAIHTTPEngine makes one HTTP call per request, in vLLM's shapes too (a loopback HTTP server plays it).

llama-server is exercised live in tests/engines/test_openai_http.py; vLLM cannot run here, so its
behaviour is written down from its OpenAI server: a `max_tokens` that does not fit beside the prompt
is a 400, continuous usage stats carry the prompt's size on every chunk.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines.base import ContextLengthExceeded, Finish, GenerationRequest, TokenChunk
from services.worker.engines.openai_http import OpenAIHTTPEngine
from services.worker.engines.sse_client import SSEClient
from services.worker.engines.upstream import CompletionStream

CONTEXT = 100
VLLM_TOO_LONG = {
    "object": "error",
    "message": "This model's maximum context length is 100 tokens. However, you requested 290 tokens "
    "(34 in the messages, 256 in the completion). Please reduce the length of the messages or completion.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def vllm_chunks(prompt: int, words: list[str], reason: str) -> bytes:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}], "usage": _usage(prompt, i + 1)}
        for i, w in enumerate(words)
    ]
    chunks[-1]["choices"][0]["finish_reason"] = reason
    return sse(*chunks, {"choices": [], "usage": _usage(prompt, len(words))})


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


Handler = Callable[[dict], httpx.Response]
"""What the played vLLM answers a request body with (httpx.Response only carries the status and bytes)."""


@pytest.fixture
def vllm() -> Iterator[Callable[[Handler], tuple[OpenAIHTTPEngine, list[dict]]]]:
    """An engine over a loopback server that answers each POST with `handler(body)`, and the bodies it got."""
    servers: list[ThreadingHTTPServer] = []

    def start(handler: Handler) -> tuple[OpenAIHTTPEngine, list[dict]]:
        bodies: list[dict] = []

        class Play(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append(body)
                reply = handler(body)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("content-type", "text/event-stream"))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        server = ThreadingHTTPServer(("127.0.0.1", 0), Play)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        engine = OpenAIHTTPEngine(url, name="vllm", concurrency=2, context=CONTEXT, timeout=5, upstream_model="m")
        engine._streams = SSEClient(url, upstream="vllm", timeout=5, keep=2)
        return engine, bodies

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def generate(engine: OpenAIHTTPEngine, **params) -> list:
    chat = (ChatMessage(role="user", content="hi"),)
    request = GenerationRequest("r", "", SamplingParams(**({"max_tokens": 256} | params)), chat)
    return list(engine.generate(request, lambda: False))


def test_a_chat_is_one_call_with_the_prompt_size_from_usage(vllm):
    engine, bodies = vllm(lambda body: httpx.Response(200, content=vllm_chunks(34, ["Red", "."], "stop")))
    items = generate(engine, max_tokens=8)
    assert items == [TokenChunk("Red", 1), TokenChunk(".", 1), Finish("stop", 34, 2)]
    assert len(bodies) == 1 and bodies[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert bodies[0]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_a_defaulted_max_tokens_vllm_refuses_is_retried_without_one(vllm):
    def handler(body: dict) -> httpx.Response:
        if "max_tokens" in body:
            return httpx.Response(400, json=VLLM_TOO_LONG)
        return httpx.Response(200, content=vllm_chunks(34, ["a"] * 66, "length"))

    engine, bodies = vllm(handler)
    items = generate(engine, max_tokens_explicit=False)
    assert items[-1] == Finish("length", 34, 66)
    assert [("max_tokens" in b) for b in bodies] == [True, False]


def test_an_explicit_max_tokens_vllm_refuses_is_a_400_without_retry(vllm):
    engine, bodies = vllm(lambda body: httpx.Response(400, json=VLLM_TOO_LONG))
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 100"):
        generate(engine, max_tokens=90)
    assert len(bodies) == 1


def test_an_explicit_max_tokens_past_the_context_is_refused_without_a_call(vllm):
    engine, bodies = vllm(lambda body: httpx.Response(500))
    with pytest.raises(ContextLengthExceeded, match="completion alone"):
        generate(engine, max_tokens=CONTEXT)
    assert bodies == []


def llama_chunk(text: str, prompt_n: int, cache_n: int, predicted_n: int) -> dict:
    timings = {"prompt_n": prompt_n, "cache_n": cache_n, "predicted_n": predicted_n}
    return {"choices": [{"index": 0, "text": text, "finish_reason": None}], "timings": timings}


def test_llama_server_timings_give_the_prompt_size_cached_part_included():
    stream = CompletionStream("llama_server", context=CONTEXT, max_tokens=40, explicit=True)
    assert list(stream.feed(llama_chunk(" a", 10, 40, 1))) == [TokenChunk(" a", 1)]
    assert stream.prompt_tokens == 50
    stream.finished = "stop"
    assert list(stream.finish()) == [Finish("stop", 50, 1)]


def test_an_explicit_max_tokens_that_does_not_fit_is_refused_before_its_first_text():
    stream = CompletionStream("llama_server", context=CONTEXT, max_tokens=60, explicit=True)
    with pytest.raises(ContextLengthExceeded, match=r"110 tokens \(50 in the prompt, 60 for the completion\)"):
        list(stream.feed(llama_chunk(" a", 10, 40, 1)))


def test_a_defaulted_max_tokens_is_cut_where_the_context_ends():
    stream = CompletionStream("llama_server", context=CONTEXT, max_tokens=256, explicit=False)
    for n in range(1, 4):
        list(stream.feed(llama_chunk(" a", 97, 0, n)))
    assert (stream.cut, stream.finished) == (True, "length")
    assert list(stream.finish()) == [Finish("length", 97, 3)]


def test_the_end_of_an_answer_is_foreseen_from_its_pace():
    """The reader stops pacing when max_tokens (or the context's end) is less than a tick away."""
    stream = CompletionStream("llama_server", context=CONTEXT, max_tokens=10, explicit=False)
    list(stream.feed(llama_chunk(" a", 5, 0, 1)))
    assert not stream.ends_within(10.0)  # one token: no pace known yet
    time.sleep(0.02)
    list(stream.feed(llama_chunk(" b", 5, 0, 2)))
    assert not stream.ends_within(0.1)  # 8 tokens left at >= 20 ms each
    assert stream.ends_within(10.0)
    cut = CompletionStream("llama_server", context=CONTEXT, max_tokens=256, explicit=False)
    list(cut.feed(llama_chunk(" a", CONTEXT - 3, 0, 1)))
    time.sleep(0.02)
    list(cut.feed(llama_chunk(" b", CONTEXT - 3, 0, 2)))
    assert cut.ends_within(1.0)  # one token of context left (254 of max_tokens would take > 5 s)
