"""Tracing off costs nothing: no SDK import, no middleware; on, the worker's spans hang under the job's context."""

from __future__ import annotations

import subprocess
import sys
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from services.common.jobs import Job, SamplingParams
from services.common.settings import ROOT, Settings

OFF = """
import sys
from services.api.app import create_app
from services.common.catalog import Catalog
from services.common.settings import Settings
from services.common.tracing import Tracing, TracingMiddleware
import redis
s = Settings(otel_exporter_otlp_endpoint="")
app = create_app(s, redis.Redis(), Catalog.from_yaml(s.models_file, s.default_model))
import services.worker.process
assert not Tracing.from_settings(s, "x").enabled
assert not any(isinstance(m, TracingMiddleware) for m in app._unprepared_middleware), app._unprepared_middleware
# (redis-py imports opentelemetry.sdk.metrics for its own, unconfigured, metrics: not ours)
assert not [m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))]
print("off")
"""


def test_off_imports_no_sdk_and_adds_no_middleware() -> None:
    result = subprocess.run([sys.executable, "-c", OFF], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "off", result.stderr


def job(traceparent: str | None) -> Job:
    now = time.time()
    return Job(
        request_id="chatcmpl-t",
        model="m",
        kind="completion",
        prompt="p",
        params=SamplingParams(max_tokens=2),
        accepted_at=now - 0.5,
        deadline=now + 60,
        traceparent=traceparent,
    )


def test_worker_spans_continue_the_jobs_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traces = tracing.Tracing(provider.get_tracer("t"), provider)
    api = provider.get_tracer("api").start_span("POST /v1/completions")
    with tracing.trace.use_span(api, end_on_exit=True):
        stamped = tracing.stamp(job(None))
    assert stamped.traceparent and api.get_span_context().span_id.to_bytes(8, "big").hex() in stamped.traceparent

    with traces.job(Job.from_wire(stamped.to_wire()), time.time(), "llama_server", "w1"):
        tracing.event("first_token")
        sidecar = tracing.outgoing()["traceparent"]  # what vLLM or llama-server receive
        tracing.annotate({"gen_ai.usage.output_tokens": 2})
    with traces.job(job(None), time.time(), "llama_server", "w1"):  # a job from an API that does not trace
        tracing.event("first_token")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/completions", "queue", "worker.job", "engine.generate"}
    trace_ids = {s.context.trace_id for s in spans.values()}
    assert len(trace_ids) == 1
    assert spans["queue"].parent.span_id == spans["worker.job"].parent.span_id == api.get_span_context().span_id
    assert spans["engine.generate"].parent.span_id == spans["worker.job"].context.span_id
    assert spans["queue"].end_time - spans["queue"].start_time >= 0.4e9  # accepted half a second before dequeue
    assert [e.name for e in spans["engine.generate"].events] == ["first_token"]
    assert spans["engine.generate"].attributes["gen_ai.usage.output_tokens"] == 2
    engine = spans["engine.generate"].context
    assert sidecar.startswith(f"00-{engine.trace_id:032x}-{engine.span_id:016x}-")


def test_without_a_span_nothing_is_stamped() -> None:
    assert tracing.stamp(job(None)).traceparent is None
    assert tracing.outgoing() == {}
    assert not tracing.Tracing.from_settings(Settings(otel_exporter_otlp_endpoint=""), "x").enabled
