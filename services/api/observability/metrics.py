"""Gateway metrics: what only the API sees. Requests by route, status and model, requests in flight,
admission rejects, client disconnects, and the gateway's own overhead (also the x-gateway-overhead-ms header).

Latency, tokens and finish reasons are the engine-side set (`inference_*`, services/worker/metrics.py),
measured once by the worker for every engine; the API does not count them twice.
Every label value comes from a closed set, never from the request as sent: a method outside METHODS is
`other`, a route is the matched route's template or `unmatched`, a model is a catalog id (or `unknown`), a
status is the one we sent; so no client can grow /metrics (300 random methods once added 3,000 lines).
Under gunicorn each process writes its samples to PROMETHEUS_MULTIPROC_DIR and /metrics merges them
(prometheus_client's multiprocess mode); without that variable the app's own registry is served.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Iterable, Iterator

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

from services.api.observability.overhead import HEADER as OVERHEAD_HEADER
from services.api.observability.overhead import GatewayClock
from services.api.observability.traffic import RecentTraffic
from services.common import buckets
from services.common.errors import RateLimited

PREFIX = "inference_gateway_"
ADMISSION_REASONS = ("queue_full", "too_many_requests")
"""The 429s of services/api/pipeline/admission.py that every deployment can meet (keyed limits add their own)."""
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
"""Methods counted by name; any other is counted as `other`."""
UNMATCHED = "unmatched"
UNKNOWN_MODEL = "unknown"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class ApiMetrics:
    """`recent`, when given, also sees each request and first token, for the status page (api/traffic.py).
    `models`, the catalog's ids, are the model label's values; any other name is `unknown` (None: no catalog
    to check against, as in tests of the metrics alone)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        recent: RecentTraffic | None = None,
        models: Collection[str] | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.recent = recent
        self.models = models  # the catalog's live ids (Catalog.ids()): a model added since start is labelled
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests by route template, method, status and model ('' where none applies).",
            ("route", "method", "status", "model_name"),
            registry=r,
        )
        self.latency = Histogram(
            PREFIX + "request_duration_seconds",
            "Arrival to the response headers (a stream's first token or keep-alive).",
            ("route", "method"),
            buckets=buckets.LATENCY,
            registry=r,
        )
        self.in_flight = Gauge(
            PREFIX + "requests_in_flight",
            "Requests being answered now, streams until their last byte.",
            ("route",),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.overhead = Histogram(
            PREFIX + "overhead_seconds",
            "Time the gateway added to a completion: before enqueue, and after its last event (x-gateway-overhead-ms).",
            ("model_name",),
            buckets=buckets.OVERHEAD,
            registry=r,
        )
        self._models: set[str] = set()
        self.rejects = Counter(
            PREFIX + "admission_rejects", "Requests refused before enqueue, by reason.", ("reason",), registry=r
        )
        for reason in ADMISSION_REASONS:  # at 0 from the start, so a rate reads 0 rather than nothing
            self.rejects.labels(reason)
        self.disconnects = Counter(
            PREFIX + "client_disconnects",
            "Completions whose client left before the answer ended (the generation is cancelled).",
            ("model_name",),
            registry=r,
        )

    def first_token(self, model: str, seconds: float) -> None:
        """For the status page only: Prometheus has the worker's inference_time_to_first_token_seconds."""
        if self.recent is not None:
            self.recent.first_token(seconds)

    def model_label(self, model: str) -> str:
        return model if not model or self.models is None or model in self.models else UNKNOWN_MODEL

    def responded(self, route: str, method: str, status: str, seconds: float | None, model: str = "") -> None:
        method, model = method_label(method), self.model_label(model)
        self.requests.labels(route, method, status, model).inc()
        if model and model not in self._models:  # its disconnect counter at 0, so a first one is an increase
            self._models.add(model)
            self.disconnects.labels(model)
        if seconds is not None:
            self.latency.labels(route, method).observe(seconds)
        if self.recent is not None and status.isdigit():
            self.recent.request(route, int(status))

    def finished(self, model: str, tokens: int, reason: str, accepted_at: float | None = None) -> None:
        """Counted by the worker (inference_request_success_total); kept as the request path's hook."""

    def gateway_overhead(self, model: str, seconds: float) -> None:
        self.overhead.labels(self.model_label(model)).observe(max(0.0, seconds))

    def cancelled(self, model: str, deadline: float | None = None) -> None:
        """An answer that did not end: the client left, unless its deadline had passed (a 504, counted by status)."""
        if deadline is None or time.time() < deadline:
            self.disconnects.labels(self.model_label(model)).inc()

    def rejected(self, reason: str) -> None:
        self.rejects.labels(reason).inc()

    @contextlib.contextmanager
    def counting_rejections(self) -> Iterator[None]:
        """Around a submit: a 429 from admission is counted by its reason, then raised on."""
        try:
            yield
        except RateLimited as exc:
            self.rejected(exc.code or "rate_limited")
            raise


def _tracked(body: Iterable[bytes], gauge: Gauge) -> Iterator[bytes]:
    """The stream, with the in-flight gauge held until its last byte; closing this closes the stream
    (gunicorn closes the body when a client leaves), so the request path's cleanup runs as before."""
    try:
        yield from body
    finally:
        gauge.dec()


class MetricsMiddleware:
    """Counts every request under its route template (not the raw path, to bound label values) and the
    model a completion resolved to (`req.context.model_name`)."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.gateway = GatewayClock(req.context.started)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        if resource is not None:
            req.context.in_flight = self.metrics.in_flight.labels(req.uri_template or UNMATCHED)
            req.context.in_flight.inc()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        route = req.uri_template or UNMATCHED
        status = str(resp.status_code if hasattr(resp, "status_code") else resp.status).split()[0]
        started = getattr(req.context, "started", None)
        clock = getattr(req.context, "gateway", None)
        if clock is not None:  # a stream's headers leave now: its value is the time before enqueue
            resp.set_header(OVERHEAD_HEADER, clock.header())
        seconds = None if started is None else time.perf_counter() - started
        self.metrics.responded(route, req.method, status, seconds, getattr(req.context, "model_name", ""))
        gauge = getattr(req.context, "in_flight", None)
        if gauge is not None:
            if resp.stream is not None and not hasattr(resp.stream, "read"):
                resp.stream = _tracked(resp.stream, gauge)
            else:
                gauge.dec()


class MetricsResource:
    """The replica's own metrics, plus `state` (queue depth, workers) in a registry of its own, since
    the multiprocess registry is rebuilt per scrape and the app's may be shared by several apps."""

    def __init__(self, metrics: ApiMetrics, state: Collector | None = None) -> None:
        self.metrics = metrics
        self.state = CollectorRegistry(auto_describe=False)
        if state is not None:
            self.state.register(state)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.metrics.registry
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry) + generate_latest(self.state)
