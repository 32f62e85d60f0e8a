"""API metrics: requests by route and status, latency, time to first token, tokens, admission rejects.

Under gunicorn each process writes its samples to PROMETHEUS_MULTIPROC_DIR and /metrics merges them
(prometheus_client's multiprocess mode); without that variable the app's own registry is served.
"""

from __future__ import annotations

import os
import time

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.registry import Collector

from services.api.overhead import HEADER as OVERHEAD_HEADER
from services.api.overhead import GatewayClock
from services.api.traffic import RecentTraffic
from services.common import buckets


class ApiMetrics:
    """`recent`, when given, also sees each request and first token, for the status page (api/traffic.py)."""

    def __init__(self, registry: CollectorRegistry | None = None, recent: RecentTraffic | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.recent = recent
        r = self.registry
        self.requests = Counter("api_requests", "HTTP requests.", ("route", "method", "status"), registry=r)
        self.latency = Histogram(
            "api_request_duration_seconds",
            "Time to the response headers.",
            ("route", "method"),
            buckets=buckets.LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "api_time_to_first_token_seconds",
            "Accepted to first token, seen by the API.",
            ("model_name",),
            buckets=buckets.LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "api_e2e_request_latency_seconds",
            "Accepted to last token, seen by the API.",
            ("model_name",),
            buckets=buckets.LATENCY,
            registry=r,
        )
        self.tokens = Counter("api_generation_tokens", "Tokens generated for clients.", ("model_name",), registry=r)
        self.finishes = Counter(
            "api_request_finished", "Completions by finish reason.", ("model_name", "finished_reason"), registry=r
        )
        self.overhead = Histogram(
            "api_gateway_overhead_seconds",
            "Time the gateway added to a completion: before enqueue, and after its last event (x-gateway-overhead-ms).",
            ("model_name",),
            buckets=buckets.OVERHEAD,
            registry=r,
        )
        self.rejects = Counter("api_admission_rejects", "Requests refused before enqueue.", ("reason",), registry=r)

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(max(0.0, seconds))
        if self.recent is not None:
            self.recent.first_token(seconds)

    def responded(self, route: str, method: str, status: str, seconds: float | None) -> None:
        self.requests.labels(route, method, status).inc()
        if seconds is not None:
            self.latency.labels(route, method).observe(seconds)
        if self.recent is not None and status.isdigit():
            self.recent.request(route, int(status))

    def finished(self, model: str, tokens: int, reason: str, accepted_at: float | None = None) -> None:
        self.tokens.labels(model).inc(tokens)
        self.finishes.labels(model, reason).inc()
        if accepted_at is not None:
            self.e2e.labels(model).observe(max(0.0, time.time() - accepted_at))

    def gateway_overhead(self, model: str, seconds: float) -> None:
        self.overhead.labels(model).observe(max(0.0, seconds))

    def cancelled(self, model: str) -> None:
        self.finishes.labels(model, "cancelled").inc()

    def rejected(self, reason: str) -> None:
        self.rejects.labels(reason).inc()


class MetricsMiddleware:
    """Counts every request under its route template (not the raw path, to bound label values)."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.gateway = GatewayClock(req.context.started)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        status = str(resp.status_code if hasattr(resp, "status_code") else resp.status).split()[0]
        started = getattr(req.context, "started", None)
        clock = getattr(req.context, "gateway", None)
        if clock is not None:  # a stream's headers leave now: its value is the time before enqueue
            resp.set_header(OVERHEAD_HEADER, clock.header())
        self.metrics.responded(route, req.method, status, None if started is None else time.perf_counter() - started)


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
