"""One request, one trace: the native stack (nginx, two API replicas, Redis, llama-server with its worker)
sends its spans over OTLP/HTTP to a receiver in this test, which decodes the protobuf requests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(gemma_path: object) -> Iterator[tuple[NativeStack, Receiver]]:
    with otlp_receiver() as (url, receiver):
        run = RUN_DIR / f"trace-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
        with native_stack(e2e_settings(run, otel_exporter_otlp_endpoint=url)) as running:
            yield running, receiver


def one_trace(receiver: Receiver, trace_id: str, names: set[str], timeout: float = 60) -> dict[str, ReceivedSpan]:
    """The spans of `trace_id` by name, once all of `names` arrived (exporters send in batches)."""
    found: dict[str, ReceivedSpan] = {}

    def arrived() -> bool:
        found.update({s.name: s for s in receiver.snapshot() if s.trace_id == trace_id})
        return names <= set(found)

    wait_until(arrived, timeout, f"spans {sorted(names)} of trace {trace_id} (have {sorted(found)})")
    return found


def test_one_request_is_one_trace_across_api_queue_worker_and_engine(traced) -> None:
    stack, receiver = traced
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5, "stream": True}
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}  # a client that traces continues its trace
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"

    names = {"POST /v1/chat/completions", "queue", "worker.job", "engine.generate"}
    spans = one_trace(receiver, CLIENT_TRACE, names)
    api, queue, job, engine = (
        spans[n] for n in ("POST /v1/chat/completions", "queue", "worker.job", "engine.generate")
    )
    assert api.service == "inference-api" and {queue.service, job.service, engine.service} == {"inference-worker"}
    # the chain: client -> API (server) -> queue and worker.job -> engine.generate
    assert api.parent_id == CLIENT_SPAN and api.kind == 2  # SPAN_KIND_SERVER
    assert queue.parent_id == api.span_id and job.parent_id == api.span_id and job.kind == 5  # CONSUMER
    assert engine.parent_id == job.span_id
    assert api.attributes["http.route"] == "/v1/chat/completions"
    assert api.attributes["http.response.status_code"] == 200
    assert api.attributes["inference.client_request_id"] == request_id
    assert engine.attributes["inference.engine"] == "llama_server"
    assert engine.attributes["gen_ai.request.model"] == MODEL
    assert 1 <= engine.attributes["gen_ai.usage.output_tokens"] <= 5
    assert engine.attributes["gen_ai.response.finish_reasons"][0] in ("stop", "length")
    assert "first_token" in engine.events
    # times line up: queued, then run; the API's span lasts until the stream's last byte, after the engine
    assert queue.end_ns <= job.start_ns + 1_000_000 and engine.start_ns >= job.start_ns
    assert api.start_ns <= queue.start_ns + 50_000_000 and engine.end_ns <= api.end_ns + 50_000_000
    assert all(path == "/v1/traces" and ctype == "application/x-protobuf" for path, ctype in receiver.requests)


def test_a_request_without_trace_context_starts_its_own_trace(traced) -> None:
    stack, receiver = traced
    body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 3}
    r = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]

    def api_span() -> ReceivedSpan | None:
        return next(
            (s for s in receiver.snapshot() if s.attributes.get("inference.client_request_id") == request_id), None
        )

    wait_until(lambda: api_span() is not None, 60, "the API's span of the request")
    span = api_span()
    assert span is not None and span.parent_id == "" and span.trace_id != CLIENT_TRACE
    spans = one_trace(receiver, span.trace_id, {"POST /v1/completions", "worker.job", "engine.generate"})
    assert spans["engine.generate"].attributes["gen_ai.usage.output_tokens"] == 3
    # scrapes and health checks are not traced
    assert not [s for s in receiver.snapshot() if "/metrics" in s.name or "/health" in s.name]
