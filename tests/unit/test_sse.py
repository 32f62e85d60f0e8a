"""Our SSE bytes, fed to the official openai package's own SSE decoder: every event it yields parses."""

import json

from openai._streaming import SSEDecoder

from services.api.sse import DONE_LINE, KEEPALIVE, sse


def decoded(raw: bytes) -> list[str]:
    return [event.data for event in SSEDecoder().iter_bytes(iter([raw]))]


def test_keepalive_between_events_with_ids_dispatches_nothing():
    raw = sse({"a": 1}, "1-0") + KEEPALIVE + KEEPALIVE + sse({"b": 2}, "2-0") + KEEPALIVE + DONE_LINE
    data = decoded(raw)
    assert data == ['{"a":1}', '{"b":2}', "[DONE]"]
    assert all(d == "[DONE]" or json.loads(d) for d in data)


def test_keepalive_before_the_first_event():
    assert decoded(KEEPALIVE + sse({"a": 1}) + DONE_LINE) == ['{"a":1}', "[DONE]"]


def test_unicode_passes_unescaped():
    assert decoded(sse({"t": "héllo ✓"}, "1-0")) == ['{"t":"héllo ✓"}']
