"""Where a request's jobs enter the queue: the one path every generating or embedding route takes.

Chat and text completions, their fanned-out choices (n > 1, prompt lists), /v1/responses and
/v1/embeddings all come through `enqueue`, so each is admitted, charged to its key's limits, joined
to the request's trace and reported in the same headers (x-ratelimit-*, x-queue-wait-ms) without a
route having to remember any of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import falcon

from services.api.observability.metrics import ApiMetrics
from services.api.observability.overhead import GatewayClock
from services.api.pipeline.gateway import Gateway
from services.api.pipeline.leases import Flight
from services.api.pipeline.queue_wait import QueueWait
from services.common import tracing
from services.common.jobs import Job


def enqueue(
    req: falcon.Request, jobs: Sequence[Job], gateway: Gateway, metrics: ApiMetrics, clock: GatewayClock
) -> tuple[list[Flight], QueueWait]:
    """Admit every job or none (a refusal midway lets go of those already admitted, and the 429 carries
    the key's headers); the flights in order, and the request's queue clock."""
    socket, key = req.env.get("gunicorn.socket"), req.context.get("api_key")
    flights: list[Flight] = []
    with metrics.counting_rejections():
        try:
            for job in jobs:
                # the worker's spans join this request's trace (a no-op when tracing is off)
                flights.append(gateway.submit(tracing.stamp(job), socket, key))
        except BaseException:
            for flight in flights:
                gateway.release(flight, finished=False)
            raise
    clock.enqueued()
    admitted = flights[-1].admitted
    req.context.quota = admitted.quota if admitted is not None else None  # x-ratelimit-* (ratelimit.py)
    wait = req.context.queue_wait = QueueWait(jobs[0].accepted_at)  # x-queue-wait-ms (queue_wait.py)
    return flights, wait


def enqueue_one(
    req: falcon.Request, job: Job, gateway: Gateway, metrics: ApiMetrics, clock: GatewayClock
) -> tuple[Flight, QueueWait]:
    """`enqueue` for a request that is one job."""
    flights, wait = enqueue(req, (job,), gateway, metrics, clock)
    return flights[0], wait
