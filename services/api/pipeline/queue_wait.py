"""How long a request waited in its model's queue, and where it stands while it still waits.

The wait is the worker's dequeue time (the `started` event) minus the API's admission time; until the
job starts it is the time waited so far. Every completion response carries it in `x-queue-wait-ms`
(a stream's headers leave when it commits: if the job still waited then, the header says the wait so
far and the stream's own comment line says the final one). While a streamed job waits, each tick
writes an SSE comment with its position in the RQ queue and an estimate of the wait left; comments
dispatch nothing, so OpenAI clients never see them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import falcon

HEADER = "x-queue-wait-ms"
TICK_S = 1.0
"""How often a waiting stream hears where it stands (and how often its liveness is checked meanwhile)."""
SERVICE_SAMPLES = 20
"""Recent service times (dequeue to done) kept per model in Redis, shared by every replica, for the estimate."""


@dataclass
class QueueWait:
    """One request's queue clock; `position`/`eta_s` are filled by the gateway on each tick while it waits."""

    accepted_at: float
    report: bool = False
    """Whether its reader wants position and estimate (a stream does; a JSON body needs only the wait)."""
    dequeued_at: float | None = None
    position: int | None = None
    """1 = the next job a free slot takes; None when unknown (not in the list: being dequeued, or retried)."""
    eta_s: float | None = None

    @property
    def waiting(self) -> bool:
        return self.dequeued_at is None

    def started(self, dequeued_at: float) -> None:
        self.dequeued_at = dequeued_at

    def ms(self, now: float | None = None) -> int:
        """Milliseconds in the queue: final once started, else so far (never negative across clocks)."""
        end = self.dequeued_at if self.dequeued_at is not None else (time.time() if now is None else now)
        return max(0, round((end - self.accepted_at) * 1000))

    def comment(self) -> bytes:
        """The SSE comment for one tick while waiting. No blank line after it, as for the keep-alive (sse.py)."""
        position = "?" if self.position is None else str(self.position)
        eta = "?" if self.eta_s is None else f"{self.eta_s:.1f}"
        return f": queued position={position} eta_s={eta} waited_ms={self.ms()}\n".encode()

    def started_comment(self) -> bytes:
        """The final wait, for a stream whose header left while it still waited."""
        return f": started queue_wait_ms={self.ms()}\n".encode()


def estimate(position: int, service_times: list[float], slots: int) -> float | None:
    """Seconds until a job at `position` starts: position * recent mean service time / live slots."""
    if not service_times or slots <= 0:
        return None
    return position * (sum(service_times) / len(service_times)) / slots


class QueueWaitMiddleware:
    """Puts `x-queue-wait-ms` on every response of a request that was admitted to a queue, errors included."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        wait: QueueWait | None = req.context.get("queue_wait")
        if wait is not None:
            resp.set_header(HEADER, str(wait.ms()))
