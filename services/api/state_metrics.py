"""Queue depth and worker state, read from Redis when Prometheus scrapes an API replica.

Workers only know themselves, and a dead worker exports nothing, so the view of the whole fleet (how
deep each model's queue is, which models have no live worker, free slots per worker) comes from the
registry and the queues that the API reads anyway. Every replica reports the same values: dashboards
and alerts take `max by (...)` across replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.registry import WorkerRecord

log = logging.getLogger(__name__)
WORKER_LABELS = ("worker", "host", "engine")


class StateCollector(Collector):
    """Gauges computed at scrape time, so they are never stale and need no background thread."""

    def __init__(
        self,
        live: Callable[[], list[WorkerRecord]],
        queued: Callable[[str], int],
        models: tuple[str, ...],
        default_model: str,
    ) -> None:
        self.live = live
        self.queued = queued
        self.models = models
        self.default_model = default_model

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Nothing while Redis is down: the replica's own metrics must still be served, or Prometheus
        would call a healthy API replica down."""
        try:
            workers = self.live()
            queued = {m: self.queued(m) for m in self.models}
        except redis.RedisError as exc:
            log.warning("queue and worker gauges skipped, Redis did not answer: %s", exc)
            return
        depth = GaugeMetricFamily("api_queue_depth", "Jobs waiting in the model's queue.", labels=("model_name",))
        for model, count in queued.items():
            depth.add_metric((model,), count)
        yield depth

        # A model is reported when it is the default, is served (or draining) somewhere, or has jobs
        # waiting: a zero then means "wanted but nobody takes it", not "merely configured".
        wanted = {self.default_model} | {m for w in workers for m in w.models} | {m for m, n in queued.items() if n}
        serving = GaugeMetricFamily(
            "api_model_workers", "Live workers taking new requests for the model.", labels=("model_name",)
        )
        for model in sorted(wanted):
            serving.add_metric((model,), sum(1 for w in workers if model in w.models and not w.draining))
        yield serving

        slots = GaugeMetricFamily("api_worker_slots", "Slots of a live worker.", labels=WORKER_LABELS)
        busy = GaugeMetricFamily("api_worker_busy_slots", "Slots generating now.", labels=WORKER_LABELS)
        draining = GaugeMetricFamily("api_worker_draining", "1 while the worker drains.", labels=WORKER_LABELS)
        started = GaugeMetricFamily(
            "api_worker_start_time_seconds", "When the worker process started (Unix time).", labels=WORKER_LABELS
        )
        state = GaugeMetricFamily(
            "api_worker_state",
            "1 for the worker's state (serving, draining, restarting, crash_loop...).",
            labels=(*WORKER_LABELS, "state"),
        )
        restarts = GaugeMetricFamily(
            "api_worker_restarts", "Restarts of the worker's engine process (or the worker).", labels=WORKER_LABELS
        )
        for w in workers:
            labels = (w.id, w.host, w.engine)
            slots.add_metric(labels, w.slots)
            busy.add_metric(labels, w.busy)
            draining.add_metric(labels, int(w.draining))
            started.add_metric(labels, w.started_at)
            state.add_metric((*labels, w.state), 1)
            restarts.add_metric(labels, w.restarts)
        yield from (slots, busy, draining, started, state, restarts)
