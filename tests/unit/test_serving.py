"""The serving pipeline's one lifecycle, seen from each route's adapter: what a body or a stream becomes, and
what the request gives back (finished or cancelled) whichever way it ends."""

from __future__ import annotations

import json

import pytest

from services.api.observability.overhead import GatewayClock
from services.api.pipeline.leases import Flight
from services.api.routes.completion_shapes import ChunkFormat, CompletionAnswer
from services.api.routes.embeddings import EmbeddingAnswer
from services.api.routes.responses_stream import ResponseAnswer, ResponseChunks
from services.common.errors import ClientGone, InternalError, InvalidRequest, ServiceUnavailable
from services.common.events import Delta, Done, Embedded, Failed, Usage, pack_vector
from tests.unit.test_sse import STARTED, FakeGateway, Quiet, job, serving

CHAT = ChunkFormat(chat=True, rid="chatcmpl-1", created=1, model="m", with_usage=False)


def collect(gateway: FakeGateway, answer, *, gone: bool = False) -> tuple[Quiet, dict]:
    metrics = Quiet()
    flight = Flight("r-1", job(), gone=gone)
    return metrics, serving(gateway, metrics).collect(flight, answer, GatewayClock())


def test_a_body_gathers_every_delta_and_releases_the_finished_job():
    gateway = FakeGateway(
        STARTED, ("2-0", Delta("Hel", 1)), ("3-0", Delta("lo", 1)), ("4-0", Done("stop", Usage(2, 2)))
    )
    metrics, body = collect(gateway, CompletionAnswer(CHAT))
    assert body["choices"][0]["message"]["content"] == "Hello" and body["usage"]["total_tokens"] == 4
    assert gateway.calls == ["finish"] and metrics.calls.count("first_token") == 1 and "cancelled" not in metrics.calls


def test_a_failed_job_is_its_status_and_nothing_is_left_to_cancel():
    failed = Failed("too long", "invalid_request_error", "context_length_exceeded", "messages", 400)
    gateway = FakeGateway(STARTED, ("2-0", failed))
    with pytest.raises(InvalidRequest) as info:
        collect(gateway, CompletionAnswer(CHAT))
    assert info.value.code == "context_length_exceeded" and gateway.calls == ["finish"]


@pytest.mark.parametrize(
    ("items", "gone", "error"),
    [
        ((("2-0", Delta("a", 1)), ("3-0", Done("stop", Usage(1, 1)))), True, ClientGone),
        ((("2-0", Delta("a", 1)),), False, InternalError),
    ],
    ids=["client gone", "no done event"],
)
def test_a_body_that_does_not_end_cancels_its_job(items, gone, error):
    gateway = FakeGateway(STARTED, *items)
    with pytest.raises(error):
        collect(gateway, CompletionAnswer(CHAT), gone=gone)
    assert gateway.calls == ["cancel"]


def test_an_embedding_body_is_the_vectors_of_its_embedded_event():
    vector = pack_vector([0.5, -1.0])
    gateway = FakeGateway(STARTED, ("2-0", Embedded((vector,))), ("3-0", Done("stop", Usage(3, 0))))
    _, body = collect(gateway, EmbeddingAnswer("mini", "float"))
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and gateway.calls == ["finish"]


def build(status: str, output: list[dict], usage: Usage | None = None) -> dict:
    return {"status": status, "output": output, "usage": None if usage is None else usage.total_tokens}


def events_of(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_a_response_stream_spells_openai_events_in_order_and_ends_without_done():
    gateway = FakeGateway(STARTED, ("2-0", Delta("Hi", 1)), ("3-0", Done("length", Usage(1, 1))))
    stream = serving(gateway, Quiet()).open_stream(Flight("r-1", job()), ResponseChunks("resp_1", build))
    raw = b"".join(stream)
    kinds = [kind for kind, _ in events_of(raw)]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert "response.output_text.delta" in kinds and b"[DONE]" not in raw
    numbers = [body["sequence_number"] for _, body in events_of(raw)]
    assert numbers == list(range(len(numbers))) and gateway.calls == ["finish"]


def test_a_response_stream_that_loses_its_worker_after_the_200_says_so_in_an_error_event():
    gateway = FakeGateway(STARTED, ("2-0", Delta("Hi", 1)), error=ServiceUnavailable("gone", code="worker_lost"))
    stream = serving(gateway, Quiet()).open_stream(Flight("r-1", job()), ResponseChunks("resp_1", build))
    kind, body = events_of(b"".join(stream))[-1]
    assert kind == "error" and body["code"] == "worker_lost" and body["message"] == "gone"
    assert gateway.calls == ["cancel"]


def test_a_response_body_has_the_streams_items():
    gateway = FakeGateway(STARTED, ("2-0", Delta("Hi", 1)), ("3-0", Done("stop", Usage(1, 1))))
    _, body = collect(gateway, ResponseAnswer("resp_1", build))
    assert body["status"] == "completed" and body["output"][0]["content"][0]["text"] == "Hi" and body["usage"] == 2
