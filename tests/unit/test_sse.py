"""Our SSE bytes, fed to the official openai package's own SSE decoder; errors before the first token are statuses."""

import json
import time
from collections.abc import Iterator

import pytest
from openai._streaming import SSEDecoder

from services.api.pipeline.leases import Flight
from services.api.pipeline.queue_wait import QueueWait
from services.api.pipeline.serving import Serving
from services.api.pipeline.sse import DONE_LINE, KEEPALIVE, sse
from services.api.routes.completion_shapes import ChunkFormat, CompletionChunks
from services.api.routes.fanout import IndexedFormat
from services.common.errors import APIError, InvalidRequest, ServiceUnavailable
from services.common.events import Delta, Done, Failed, Started, Usage
from services.common.jobs import Job, SamplingParams
from services.common.settings import Settings


def decoded(raw: bytes) -> list[str]:
    return [event.data for event in SSEDecoder().iter_bytes(iter([raw]))]


def test_keepalive_between_events_with_ids_dispatches_nothing():
    raw = sse({"a": 1}, "1-0") + KEEPALIVE + KEEPALIVE + sse({"b": 2}, "2-0") + KEEPALIVE + DONE_LINE
    data = decoded(raw)
    assert data == ['{"a":1}', '{"b":2}', "[DONE]"]
    assert all(d == "[DONE]" or json.loads(d) for d in data)


def test_keepalive_before_the_first_event():
    assert decoded(KEEPALIVE + sse({"a": 1}) + DONE_LINE) == ['{"a":1}', "[DONE]"]


def test_queue_comments_dispatch_nothing_in_the_openai_decoder():
    """The visible queue's comment lines, after an event with an id (the case that breaks with a blank line)."""
    wait = QueueWait(accepted_at=time.time() - 2.5, position=3, eta_s=4.25)
    assert wait.comment().startswith(b": queued position=3 eta_s=4.2 waited_ms=") and wait.comment().endswith(b"\n")
    unknown = QueueWait(accepted_at=time.time())
    assert unknown.comment().startswith(b": queued position=? eta_s=? ")
    wait.started(wait.accepted_at + 3.0)
    raw = sse({"a": 1}, "1-0") + unknown.comment() + wait.comment() + wait.started_comment() + sse({"b": 2}) + DONE_LINE
    assert decoded(raw) == ['{"a":1}', '{"b":2}', "[DONE]"]
    assert wait.started_comment() == b": started queue_wait_ms=3000\n" and wait.ms() == 3000


def test_unicode_passes_unescaped():
    assert decoded(sse({"t": "héllo ✓"}, "1-0")) == ['{"t":"héllo ✓"}']


class FakeGateway:
    """The events a worker would publish, and a record of what the request gave back."""

    def __init__(self, *items, error: APIError | None = None) -> None:
        self.items = items
        self.error = error
        self.calls: list[str] = []

    def events(self, flight: Flight, wait: object = None) -> Iterator:
        yield from self.items
        if self.error is not None:
            raise self.error

    def release(self, flight: Flight, *, finished: bool) -> None:
        self.calls.append("finish" if finished else "cancel")


class Quiet:
    """Metrics that only count."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.calls.append(name)


def job() -> Job:
    now = time.time()
    params = SamplingParams(max_tokens=4)
    return Job(
        request_id="cmpl-1", model="m", kind="completion", prompt="p", params=params, accepted_at=now, deadline=now + 30
    )


FMT = ChunkFormat(chat=False, rid="cmpl-1", created=1, model="m", with_usage=False)
STARTED = ("1-0", Started("w1", 0.0))


def serving(gateway: FakeGateway, metrics: Quiet) -> Serving:
    """The pipeline over the fake gateway (no catalog: these requests are past their checks)."""
    return Serving(Settings(), None, gateway, metrics)  # type: ignore[arg-type]


def opened(gateway: FakeGateway) -> tuple[Quiet, Iterator[bytes]]:
    metrics = Quiet()
    return metrics, serving(gateway, metrics).open_stream(Flight("cmpl-1", job()), CompletionChunks(FMT))


def test_error_before_the_first_token_is_its_http_status():
    failed = Failed("too long", "invalid_request_error", "context_length_exceeded", "max_tokens", 400)
    gateway = FakeGateway(STARTED, ("2-0", failed))
    with pytest.raises(InvalidRequest) as info:
        opened(gateway)
    assert info.value.status == 400 and info.value.param == "max_tokens"
    assert info.value.envelope()["error"]["code"] == "context_length_exceeded"
    assert gateway.calls == ["finish"], "a failed job is over: nothing to cancel, stream and lease dropped"


def test_model_gone_before_the_first_token_is_503_with_retry_after():
    gateway = FakeGateway(STARTED, error=ServiceUnavailable("gone", code="worker_lost"))
    with pytest.raises(ServiceUnavailable) as info:
        opened(gateway)
    assert info.value.status == 503 and int(info.value.headers["Retry-After"]) > 0
    assert gateway.calls == ["cancel"], "one release, which cancels"


def test_first_delta_commits_and_nothing_is_lost():
    gateway = FakeGateway(STARTED, ("2-0", Delta("a", 1)), ("3-0", Delta("b", 1)), ("4-0", Done("length", Usage(1, 2))))
    _, body = opened(gateway)
    assert gateway.calls == [], "committed: the stream holds its resources until it ends"
    texts = [json.loads(d)["choices"][0]["text"] for d in decoded(b"".join(body)) if d != "[DONE]"]
    assert texts == ["a", "b", ""]
    assert gateway.calls == ["finish"]


def test_still_queued_after_a_quiet_tick_commits_with_keepalives():
    gateway = FakeGateway(None, None, ("2-0", Failed("late", status=500)))
    _, body = opened(gateway)
    chunks = list(body)
    assert chunks[:2] == [KEEPALIVE, KEEPALIVE]
    assert json.loads(decoded(b"".join(chunks))[0])["error"]["message"] == "late", "after the 200: an error event"


def test_a_batched_delta_is_one_chunk_per_token_in_one_write():
    """Workers batch tokens between flushes; clients still get one chunk per token, as from OpenAI."""
    batched = Delta("Hello world!", 3, pieces=("Hello", " world", "!"))
    gateway = FakeGateway(STARTED, ("2-0", batched), ("3-0", Done("stop", Usage(1, 3))))
    _, body = opened(gateway)
    writes = list(body)
    delta_write = next(w for w in writes if b"Hello" in w)
    lines = delta_write.decode().split("\n\n")
    assert [json.loads(x.split("data: ")[1])["choices"][0]["text"] for x in lines if x] == ["Hello", " world", "!"]
    assert delta_write.count(b"id: 2-0") == 1 and lines[-2].startswith("id: 2-0"), "the id goes on the last piece"


@pytest.mark.parametrize(
    "fmt",
    [
        ChunkFormat(True, "chatcmpl-1", 123, "gemma", True),
        ChunkFormat(False, "cmpl-1", 123, "gemma", False),
        IndexedFormat(True, "chatcmpl-2", 9, "m", False, index=3),
    ],
    ids=["chat", "completion", "fanned-out choice"],
)
def test_the_chunk_template_writes_what_the_dict_would(fmt: ChunkFormat) -> None:
    """Quotes, line ends, backslashes, astral and private-use characters (the template's own mark)."""
    pieces = ["He", ' said "hi"\n', "é😀", "\ue000", "\\", "</s>"]
    expected = b"".join(sse(fmt.delta(p), "5-0" if i == len(pieces) - 1 else None) for i, p in enumerate(pieces))
    assert fmt.deltas(pieces, "5-0") == expected
