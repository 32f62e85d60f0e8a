"""Admission before enqueue: bound requests in flight (MAX_CONCURRENT_REQUESTS) and queue depth, then
take the lease and enqueue, all in one round trip (one Lua script, so atomic: no job without a lease, no
admitted request beyond the limit, whatever other replicas do meanwhile).

In-flight requests live in a sorted set scored by lease expiry, shared by every API replica and renewed
with the leases (see leases.py); the entries of a replica that died fall out within LEASE_TTL.
"""

from __future__ import annotations

import logging
import time

import redis

from services.common import keys
from services.common.errors import RateLimited
from services.common.jobs import Job

log = logging.getLogger(__name__)

# KEYS: inflight set, the model's RQ queue, the lease. ARGV: now, score, max in flight, max queue depth,
# request id, lease ttl (ms), lease value, then RQ's enqueue as commands, each as its length then its words.
# RQ's commands name keys that are not in KEYS: fine on one Redis, as this service runs (no Cluster).
ADMIT = """
local depth = redis.call('LLEN', KEYS[2])
if depth >= tonumber(ARGV[4]) then return {1, depth} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then return {2, count} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]) + 60000)
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[6])
local i = 8
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
return {0, count + 1}
"""


class Admission:
    def __init__(self, client: redis.Redis, *, max_inflight: int, max_queue_depth: int) -> None:
        self.redis = client
        self.max_inflight = max_inflight
        self.max_queue_depth = max_queue_depth
        self._script = client.register_script(ADMIT)

    def admit(self, rid: str, job: Job, *, queue_key: str, enqueue: list[tuple[object, ...]], lease_ttl: float) -> None:
        """Admit `rid`, take the lease of `job` and run RQ's `enqueue` commands, or raise a 429 (nothing done)."""
        now = time.time()
        argv: list[object] = [now, now + lease_ttl, self.max_inflight, self.max_queue_depth, rid]
        argv += [int(lease_ttl * 1000), job.attempt]
        for command in enqueue:
            argv += [len(command), *command]
        verdict, count = self._script(keys=[keys.inflight(), queue_key, keys.lease(job.request_id)], args=argv)
        if verdict == 1:
            raise RateLimited(
                f"The queue for this model is full ({count} waiting); retry shortly.",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        if verdict == 2:
            raise RateLimited(
                f"Too many concurrent requests (limit {self.max_inflight}); retry shortly.",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )

    def inflight(self) -> int:
        return int(self.redis.zcount(keys.inflight(), time.time(), "+inf"))
