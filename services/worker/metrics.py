"""Worker metrics, named after vLLM's where they mean the same, labelled by model and engine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common import buckets
from services.common.events import Usage


class WorkerMetrics:
    """Owns its registry (no globals), so several workers can live in one test process."""

    def __init__(self, engine: str, registry: CollectorRegistry | None = None) -> None:
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        labels = ("model_name", "engine")
        r = self.registry
        self._ttft = Histogram(
            "inference_time_to_first_token_seconds",
            "Accepted to first token.",
            labels,
            buckets=buckets.LATENCY,
            registry=r,
        )
        self._itl = Histogram(
            "inference_inter_token_latency_seconds",
            "Time between tokens.",
            labels,
            buckets=buckets.INTER_TOKEN,
            registry=r,
        )
        self._e2e = Histogram(
            "inference_e2e_request_latency_seconds",
            "Accepted to last token.",
            labels,
            buckets=buckets.LATENCY,
            registry=r,
        )
        self._queue = Histogram(
            "inference_request_queue_time_seconds", "Accepted to dequeued.", labels, buckets=buckets.LATENCY, registry=r
        )
        self._running = Gauge("inference_num_requests_running", "Requests generating now.", labels, registry=r)
        self._prompt = Counter("inference_prompt_tokens", "Prompt tokens processed.", labels, registry=r)
        self._gen = Counter("inference_generation_tokens", "Tokens generated.", labels, registry=r)
        self._success = Counter(
            "inference_request_success", "Finished requests.", (*labels, "finished_reason"), registry=r
        )

    def queue_time(self, model: str, seconds: float) -> None:
        self._queue.labels(model, self.engine).observe(max(0.0, seconds))

    def first_token(self, model: str, seconds: float) -> None:
        self._ttft.labels(model, self.engine).observe(max(0.0, seconds))

    def inter_token(self, model: str, seconds: float) -> None:
        self._itl.labels(model, self.engine).observe(max(0.0, seconds))

    def finished(self, model: str, usage: Usage, seconds: float, reason: str) -> None:
        self._e2e.labels(model, self.engine).observe(max(0.0, seconds))
        self._prompt.labels(model, self.engine).inc(usage.prompt_tokens)
        self._gen.labels(model, self.engine).inc(usage.completion_tokens)
        self._success.labels(model, self.engine, reason).inc()

    @contextlib.contextmanager
    def running(self, model: str) -> Iterator[None]:
        gauge = self._running.labels(model, self.engine)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
