"""The engine-side metric set: the same names for every engine (llama-server, in-process llama.cpp, MLX,
vLLM), measured by the worker around `Engine.generate`, so one dashboard serves them all.

Names are vLLM's (`vllm:time_to_first_token_seconds` ...) under our one prefix, `inference_`, and mean the
same: TTFT and end-to-end latency count from the API's acceptance (vLLM: arrival), queue time from
acceptance to dequeue, finished requests by reason (stop, length, abort, error). Labels: model_name,
engine and worker (the worker's registry id, so a series joins the registry's gauges). The queue's
waiting requests are not the worker's to know: `inference_num_requests_waiting` comes from Redis
(services/api/observability/state_metrics.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common import buckets
from services.common.events import Usage

PREFIX = "inference_"
LABELS = ("model_name", "engine", "worker")
REASONS = ("stop", "length", "abort", "error")


class WorkerMetrics:
    """Owns its registry (no globals), so several workers can live in one test process. `engine` may change
    once the engine that loads is known (the worker falls back through a list)."""

    def __init__(self, engine: str, registry: CollectorRegistry | None = None, worker: str = "") -> None:
        self.engine = engine
        self.worker = worker
        self._seen: set[tuple[str, str, str]] = set()
        self._itl_series: dict[tuple[str, str, str], Histogram] = {}
        """The inter-token histogram's series by labels: it is observed for every token."""
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def histogram(name: str, doc: str, bounds: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, LABELS, buckets=bounds, registry=r)

        self._ttft = histogram(
            "time_to_first_token_seconds", "Accepted by the API to the first token.", buckets.LATENCY
        )
        self._itl = histogram("inter_token_latency_seconds", "Time between tokens.", buckets.INTER_TOKEN)
        self._e2e = histogram("e2e_request_latency_seconds", "Accepted by the API to the last token.", buckets.LATENCY)
        self._queue = histogram("request_queue_time_seconds", "Accepted by the API to dequeued.", buckets.LATENCY)
        self._running = Gauge(PREFIX + "num_requests_running", "Requests generating now.", LABELS, registry=r)
        self._prompt = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", LABELS, registry=r)
        self._gen = Counter(PREFIX + "generation_tokens", "Tokens generated.", LABELS, registry=r)
        self._success = Counter(
            PREFIX + "request_success",
            "Finished requests by reason: stop, length, abort (the client left or the deadline passed), error.",
            (*LABELS, "finished_reason"),
            registry=r,
        )

    def _labels(self, model: str) -> tuple[str, str, str]:
        labels = (model, self.engine, self.worker)
        if labels not in self._seen:  # every reason at 0 from the first job, so a first abort is an increase
            self._seen.add(labels)
            for reason in REASONS:
                self._success.labels(*labels, reason)
        return labels

    def queue_time(self, model: str, seconds: float) -> None:
        self._queue.labels(*self._labels(model)).observe(max(0.0, seconds))

    def first_token(self, model: str, seconds: float) -> None:
        self._ttft.labels(*self._labels(model)).observe(max(0.0, seconds))

    def inter_token(self, model: str, seconds: float) -> None:
        labels = (model, self.engine, self.worker)
        series = self._itl_series.get(labels)
        if series is None:
            series = self._itl_series[labels] = self._itl.labels(*self._labels(model))
        series.observe(max(0.0, seconds))

    def finished(self, model: str, usage: Usage, seconds: float, reason: str) -> None:
        labels = self._labels(model)
        self._e2e.labels(*labels).observe(max(0.0, seconds))
        self._prompt.labels(*labels).inc(usage.prompt_tokens)
        self._gen.labels(*labels).inc(usage.completion_tokens)
        self._success.labels(*labels, reason).inc()

    def failed(self, model: str) -> None:
        """A job that ended with an error event: counted, with no latency (it produced no answer)."""
        self._success.labels(*self._labels(model), "error").inc()

    @contextlib.contextmanager
    def running(self, model: str) -> Iterator[None]:
        gauge = self._running.labels(*self._labels(model))
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
