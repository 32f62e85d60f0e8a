"""The time the gateway itself adds to a request, as LiteLLM's `x-litellm-overhead-duration-ms` says it.

Measured on this process's monotonic clock only (worker clocks may be skewed): the time from the request's
arrival to its job being enqueued (body, validation, admission, enqueue), plus the time from reading the
job's last event to the end of the reply. The queue wait and the generation are the engine's, not ours.
A request that never reached the queue (an error, /v1/models) spent all of its time in the gateway.
"""

from __future__ import annotations

import time

HEADER = "x-gateway-overhead-ms"


class GatewayClock:
    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started
        self.before_enqueue: float | None = None
        self.last_event_at: float | None = None

    def enqueued(self) -> None:
        self.before_enqueue = time.perf_counter() - self.started

    def last_event(self) -> None:
        """The done or error event was read: from here on the time is ours again."""
        self.last_event_at = time.perf_counter()

    def seconds(self) -> float:
        now = time.perf_counter()
        if self.before_enqueue is None:
            return now - self.started
        after = 0.0 if self.last_event_at is None else now - self.last_event_at
        return self.before_enqueue + after

    def header(self) -> str:
        return f"{self.seconds() * 1000:.2f}"
