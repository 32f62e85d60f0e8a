"""Admission before enqueue: bound requests in flight (MAX_CONCURRENT_REQUESTS) and queue depth.

In-flight requests live in a sorted set scored by deadline, shared by every API replica; an entry
whose replica crashed falls out at its deadline, so the count never leaks.
"""

from __future__ import annotations

import logging
import time

import redis

from services.common import keys
from services.common.errors import RateLimited

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, client: redis.Redis, *, max_inflight: int, max_queue_depth: int) -> None:
        self.redis = client
        self.max_inflight = max_inflight
        self.max_queue_depth = max_queue_depth

    def admit(self, request_id: str, deadline: float, queued: int) -> None:
        if queued >= self.max_queue_depth:
            raise RateLimited(
                f"The queue for this model is full ({queued} waiting); retry shortly.",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        key = keys.inflight()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", time.time())
        pipe.zadd(key, {request_id: deadline})
        pipe.zcard(key)
        pipe.expire(key, max(1, int(deadline - time.time())) + 60)
        count = pipe.execute()[2]
        if count > self.max_inflight:
            self.release(request_id)
            raise RateLimited(
                f"Too many concurrent requests (limit {self.max_inflight}); retry shortly.",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )

    def release(self, request_id: str) -> None:
        """Best effort: if Redis is down the entry still falls out at its deadline."""
        try:
            self.redis.zrem(keys.inflight(), request_id)
        except redis.RedisError as exc:
            log.warning("could not release %s: %s", request_id, exc)

    def inflight(self) -> int:
        return int(self.redis.zcount(keys.inflight(), time.time(), "+inf"))
