"""OpenTelemetry spans of one request across the API, the queue, the worker and the engine.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: then the SDK is never imported, the API adds no middleware
and the worker's hooks cost an attribute test (no span is recording). On, each process sends its spans in
batches from a background thread over OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`, and the trace
context crosses Redis in the job (`Job.traceparent`, W3C), so one request is one trace:

    inference-api     POST /v1/chat/completions   SERVER    arrival to the reply's last byte
    inference-worker    queue                               accepted to dequeued (written at dequeue)
                        worker.job                CONSUMER  dequeued to done or error
                          engine.generate                   the engine's call; first_token event, usage

A client's own `traceparent` header is continued (nginx passes it through), so its trace holds ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.jobs import Job
from services.common.settings import Settings

if TYPE_CHECKING:  # the worker imports this module too, and has no HTTP server
    import falcon

log = logging.getLogger(__name__)
PROPAGATOR = TraceContextTextMapPropagator()
TRACED_PREFIX = "/v1/"
"""Client routes only: Prometheus's scrapes and the status page's polls would bury the requests."""


def _ns(unix_s: float) -> int:
    return int(unix_s * 1e9)


class Tracing:
    """A tracer and its provider, or nothing (off). Built per process, after gunicorn's fork."""

    def __init__(self, tracer: trace.Tracer | None = None, provider: Any = None) -> None:
        self.tracer = tracer
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def from_settings(cls, settings: Settings, service: str) -> Tracing:
        endpoint = settings.otel_exporter_otlp_endpoint
        if not endpoint:
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        instance = f"{socket.gethostname()}:{os.getpid()}"
        provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": instance}))
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        log.info("tracing: spans of %s go to %s over OTLP/HTTP", service, endpoint)
        return cls(provider.get_tracer("services"), provider)

    def shutdown(self) -> None:
        """Send what is buffered (the provider also does it at exit)."""
        if self.provider is not None:
            self.provider.shutdown()

    @contextlib.contextmanager
    def job(self, job: Job, dequeued: float, engine: str, worker: str) -> Iterator[None]:
        """The worker's spans of one job, children of the API's span carried in the job."""
        if self.tracer is None or not job.traceparent:
            yield
            return
        parent = PROPAGATOR.extract({"traceparent": job.traceparent})
        attrs = {"gen_ai.request.model": job.model, "inference.request_id": job.request_id, "inference.worker": worker}
        queued = self.tracer.start_span("queue", parent, start_time=_ns(job.accepted_at), attributes=attrs)
        queued.end(end_time=_ns(dequeued))
        kind = trace.SpanKind.CONSUMER
        with (
            self.tracer.start_as_current_span("worker.job", parent, kind, attrs, start_time=_ns(dequeued)),
            self.tracer.start_as_current_span("engine.generate", attributes={**attrs, "inference.engine": engine}),
        ):
            yield


def stamp(job: Job) -> Job:
    """`job` carrying the current span's context (the API's request span), so the worker joins its trace."""
    if not trace.get_current_span().is_recording():
        return job
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return job.model_copy(update={"traceparent": carrier.get("traceparent")})


def outgoing() -> dict[str, str]:
    """Headers for a call to the engine's sidecar: vLLM started with --otlp-traces-endpoint continues
    the trace under engine.generate; llama-server ignores them. Empty when no span records."""
    if not trace.get_current_span().is_recording():
        return {}
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier


def event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """An event on the current span (the engine's, in a worker); nothing when no span records."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes or {})


def annotate(attributes: Mapping[str, Any]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def _ended(body: Iterable[bytes], span: trace.Span) -> Iterator[bytes]:
    """A stream whose span ends with its last byte (or when the client leaves and gunicorn closes it)."""
    try:
        yield from body
    finally:
        span.end()


class TracingMiddleware:
    """One SERVER span per /v1 request, current while the responder runs (gthread: one thread per request),
    so `stamp` finds it; a stream's span ends with the stream."""

    def __init__(self, tracing: Tracing) -> None:
        assert tracing.tracer is not None
        self.tracer = tracing.tracer

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not req.path.startswith(TRACED_PREFIX):
            return
        incoming = req.get_header("traceparent")
        parent = PROPAGATOR.extract({"traceparent": incoming}) if incoming else None
        attrs = {"http.request.method": req.method, "url.path": req.path}
        span = self.tracer.start_span(f"{req.method} {req.path}", parent, trace.SpanKind.SERVER, attrs)
        req.context.trace_span = span
        req.context.trace_token = context.attach(trace.set_span_in_context(span))

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        span = req.context.get("trace_span")
        if span is not None and req.uri_template:
            span.update_name(f"{req.method} {req.uri_template}")
            span.set_attribute("http.route", req.uri_template)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        span = req.context.get("trace_span")
        if span is None:
            return
        context.detach(req.context.trace_token)
        status = int(str(resp.status_code if hasattr(resp, "status_code") else resp.status).split()[0])
        span.set_attribute("http.response.status_code", status)
        if request_id := resp.get_header("X-Request-ID"):
            span.set_attribute("inference.client_request_id", request_id)
        if status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        if resp.stream is not None and not hasattr(resp.stream, "read"):
            resp.stream = _ended(resp.stream, span)
        else:
            span.end()
