"""Queue and worker state, read from Redis when Prometheus scrapes an API replica.

Workers only know themselves, and a dead worker exports nothing, so the view of the whole fleet (how
many requests wait for each model and for how long, which models have no live worker, free slots per
worker) comes from the registry and the queues that the API reads anyway. Every replica reports the same
values: dashboards and alerts take `max by (...)` across replicas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from rq.job import Job as RQJob
from rq.utils import str_to_date

from services.common.registry import WorkerRecord

log = logging.getLogger(__name__)
WORKER_LABELS = ("worker", "host", "engine")
HEAD = 16
"""Jobs read at the head of a queue for the oldest one's age: RQ pops from the head, so the oldest waiting
job is among the first few (a retried job goes back to the end, and it has waited less than the head)."""


@dataclass(frozen=True)
class Waiting:
    count: int
    oldest_age_s: float
    """Seconds the oldest waiting job has waited since it was enqueued; 0 for an empty queue."""


class QueueProbe:
    """Depth and age of the oldest job of every model's RQ queue in two round trips, whatever the count."""

    def __init__(self, client: redis.Redis, queue_key: Callable[[str], str]) -> None:
        self.redis = client
        self.queue_key = queue_key

    def __call__(self, models: tuple[str, ...]) -> dict[str, Waiting]:
        pipe = self.redis.pipeline(transaction=False)
        for model in models:
            pipe.llen(self.queue_key(model))
            pipe.lrange(self.queue_key(model), 0, HEAD - 1)
        replies = pipe.execute()
        counts, heads = replies[0::2], replies[1::2]
        pipe = self.redis.pipeline(transaction=False)
        for head in heads:
            for job_id in head:
                pipe.hget(RQJob.key_for(job_id.decode() if isinstance(job_id, bytes) else job_id), "enqueued_at")
        stamps = iter(pipe.execute() if any(heads) else [])
        now = time.time()
        out = {}
        for model, count, head in zip(models, counts, heads, strict=True):
            ages = [now - str_to_date(s).timestamp() for s in (next(stamps) for _ in head) if s]
            out[model] = Waiting(int(count), max(0.0, max(ages, default=0.0)))
        return out


class StateCollector(Collector):
    """Gauges computed at scrape time, so they are never stale and need no background thread."""

    def __init__(
        self,
        live: Callable[[], list[WorkerRecord]],
        waiting: Callable[[tuple[str, ...]], dict[str, Waiting]],
        models: Collection[str],
        default_model: str,
    ) -> None:
        self.live = live
        self.waiting = waiting
        self.models = models
        self.default_model = default_model

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Nothing while Redis is down: the replica's own metrics must still be served, or Prometheus
        would call a healthy API replica down."""
        try:
            workers = self.live()
            queues = self.waiting(tuple(self.models))  # the catalog's ids now (Catalog.ids())
        except redis.RedisError as exc:
            log.warning("queue and worker gauges skipped, Redis did not answer: %s", exc)
            return
        depth = GaugeMetricFamily(
            "inference_num_requests_waiting", "Requests waiting in the model's queue.", labels=("model_name",)
        )
        age = GaugeMetricFamily(
            "inference_queue_oldest_age_seconds",
            "How long the oldest request waiting in the model's queue has waited (0: none waits).",
            labels=("model_name",),
        )
        for model, q in queues.items():
            depth.add_metric((model,), q.count)
            age.add_metric((model,), round(q.oldest_age_s, 3))
        yield depth
        yield age

        # A model is reported when it is the default, is served (or draining) somewhere, or has jobs
        # waiting: a zero then means "wanted but nobody takes it", not "merely configured".
        queued = {m for m, q in queues.items() if q.count}
        wanted = {self.default_model} | {m for w in workers for m in w.models} | queued
        serving = GaugeMetricFamily(
            "inference_model_workers", "Live workers taking new requests for the model.", labels=("model_name",)
        )
        for model in sorted(wanted):
            serving.add_metric((model,), sum(1 for w in workers if model in w.models and not w.draining))
        yield serving

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily("inference_worker_" + name, doc, labels=(*WORKER_LABELS, *extra))

        slots = gauge("slots", "Slots of a live worker.")
        busy = gauge("busy_slots", "Slots generating now.")
        draining = gauge("draining", "1 while the worker drains.")
        started = gauge("start_time_seconds", "When the worker process started (Unix time).")
        state = gauge("state", "1 for the worker's state (serving, draining, restarting, crash_loop...).", ("state",))
        restarts = gauge("restarts", "Restarts of the worker's engine process (or the worker).")
        for w in workers:
            labels = (w.id, w.host, w.engine)
            slots.add_metric(labels, w.slots)
            busy.add_metric(labels, w.busy)
            draining.add_metric(labels, int(w.draining))
            started.add_metric(labels, w.started_at)
            state.add_metric((*labels, w.state), 1)
            restarts.add_metric(labels, w.restarts)
        yield from (slots, busy, draining, started, state, restarts)
