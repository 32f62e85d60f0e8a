"""Writes one request's events to its Redis Stream and answers whether anyone still waits for them."""

from __future__ import annotations

import time

import redis

from services.common import events, keys

CANCEL_POLL_S = 0.05


class StreamPublisher:
    """Bound to one request: XADD events, EXPIRE the stream, poll the lease at most every 50 ms.

    Every write sets the TTL with its XADD, atomically (MULTI/EXEC) and in one round trip: the API deletes
    the stream when its client is done, and an XADD that lands after that (a token in flight at a
    disconnect) re-creates the key, which must then expire on its own rather than live forever.
    """

    def __init__(self, client: redis.Redis, request_id: str, ttl: int, deadline: float) -> None:
        self.redis = client
        self.key = keys.stream(request_id)
        self.lease_key = keys.lease(request_id)
        self.ttl = ttl
        self.deadline = deadline
        self._checked_at = 0.0
        self._cancelled = False

    def publish(self, event: events.Event) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.key, events.encode(event))
        pipe.expire(self.key, self.ttl)
        pipe.execute()

    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._checked_at >= CANCEL_POLL_S:
            self._checked_at = now
            self._cancelled = time.time() > self.deadline or not self.redis.exists(self.lease_key)
        return self._cancelled
