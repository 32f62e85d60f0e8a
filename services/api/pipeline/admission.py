"""Admission before enqueue: bound requests in flight (MAX_CONCURRENT_REQUESTS, and a key's concurrency)
and queue depth, then take the lease, enqueue, and put the job in its fair place in the queue, all in one
round trip (one Lua script, so atomic: no job without a lease, no admitted request beyond a limit, whatever
other replicas do meanwhile). A keyed caller's RPM/TPM are charged just before (ratelimit.py) and given
back if the script refuses.

In-flight requests live in sorted sets (all, and per key) scored by lease expiry, shared by every API
replica and renewed with the leases (see leases.py); the entries of a replica that died fall out within
LEASE_TTL.

Fair share (FAIR_SHARE) is start-time fair queueing inside RQ's own list, so workers stay plain RQ workers
taking the list's head: a job's tag is max(virtual time, its key's last finish tag); its key's finish tag
becomes tag + 1/priority; the job moves (LINSERT) before the first waiting job with a larger tag. Virtual
time is the head's tag (the next to run), or, with nothing waiting, the largest tag given. So a key's flood
of 40 gets tags 0..39 and a newcomer's single request lands behind at most one job of each key already
waiting at the head's tag: it starts within one slot turnover. Jobs without a tag (a retry, or enqueued
with FAIR_SHARE off) are never passed. The walk reads the whole queue, which MAX_QUEUE_DEPTH bounds; a
queue longer than FAIR_WALK is left first come, first served.
"""

from __future__ import annotations

import logging
import time

import redis
from redis.client import Pipeline

from services.api.limits.key_limits import KeyLimits
from services.api.limits.ratelimit import Quota, RateLimiter
from services.api.limits.usage import UsageBook
from services.api.pipeline.leases import Admitted, Flight
from services.common import keys
from services.common.errors import RateLimited
from services.common.jobs import Job
from services.keys.store import ApiKey

log = logging.getLogger(__name__)

FAIR_WALK = 4096
"""Longest queue the fair-share placement reads; past it a job stays at the tail."""
FAIR_TTL_MS = 3_600_000
"""The fair-share hash outlives an idle hour; a tag left by a lost job goes with it."""


# KEYS: inflight set, the model's RQ queue, the lease, the key's inflight set, the queue's fair-share hash.
# ARGV: now, score, max in flight, max queue depth, request id, lease ttl (ms), lease value, key concurrency
# (0: none), fair share (1/0), job id, key name, 1/priority, fair hash ttl (ms), fair walk, then RQ's enqueue
# as commands, each as its length then its words.
# RQ's commands name keys that are not in KEYS: fine on one Redis, as this service runs (no Cluster).
ADMIT = """
local depth = redis.call('LLEN', KEYS[2])
if depth >= tonumber(ARGV[4]) then return {1, depth} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then return {2, count} end
local per = tonumber(ARGV[8])
if per > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
  local mine = redis.call('ZCARD', KEYS[4])
  if mine >= per then return {3, mine} end
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[6]) + 60000)
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]) + 60000)
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[6])
local i = 15
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
local waiting = redis.call('LLEN', KEYS[2]) - 1
local job = ARGV[10]
redis.call('HSET', KEYS[5], 'o:' .. job, ARGV[11])
redis.call('PEXPIRE', KEYS[5], ARGV[13])
if ARGV[9] ~= '1' or waiting > tonumber(ARGV[14]) then return {0, count + 1, waiting} end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
if ids[#ids] ~= job then return {0, count + 1, waiting} end
local tags = {}
if #ids > 1 then
  local fields = {}
  for j = 1, #ids - 1 do fields[j] = 'j:' .. ids[j] end
  tags = redis.call('HMGET', KEYS[5], unpack(fields))
end
local v = nil
for j = 1, #ids - 1 do
  if tags[j] then v = tonumber(tags[j]); break end
end
local given = tonumber(redis.call('HGET', KEYS[5], 'v') or '0')
if v == nil then v = given end
local tag = math.max(v, tonumber(redis.call('HGET', KEYS[5], 'k:' .. ARGV[11]) or '0'))
redis.call('HSET', KEYS[5], 'j:' .. job, tag, 'k:' .. ARGV[11], tag + tonumber(ARGV[12]), 'v', math.max(given, tag))
for j = 1, #ids - 1 do
  if tags[j] and tonumber(tags[j]) > tag then
    redis.call('LREM', KEYS[2], -1, job)
    redis.call('LINSERT', KEYS[2], 'BEFORE', ids[j], job)
    return {0, count + 1, j - 1}
  end
end
return {0, count + 1, waiting}
"""


class Admission:
    def __init__(
        self,
        client: redis.Redis,
        *,
        max_inflight: int,
        max_queue_depth: int,
        limiter: RateLimiter | None = None,
        fair_share: bool = True,
        usage: UsageBook | None = None,
    ) -> None:
        self.redis = client
        self.max_inflight = max_inflight
        self.max_queue_depth = max_queue_depth
        self.limiter = limiter
        self.fair_share = fair_share
        self.usage = usage
        self._script = client.register_script(ADMIT)

    def admit(
        self,
        rid: str,
        job: Job,
        *,
        queue_key: str,
        enqueue: list[tuple[object, ...]],
        lease_ttl: float,
        key: ApiKey | None = None,
    ) -> Admitted:
        """Admit `rid`, take the lease of `job` and run RQ's `enqueue` commands, or raise a 429 (nothing done).
        A keyed caller's RPM/TPM are charged first (one round trip per limit it has) and given back on a 429."""
        limits = self.limiter.limits_of(key) if self.limiter is not None else None
        if limits is None and key is not None:
            limits = KeyLimits.of(key)  # no limiter: the key's own concurrency and priority still hold
        quota = self.limiter.charge(limits, job) if limits is not None and self.limiter is not None else None
        now = time.time()
        group = job.key_name or ""
        argv: list[object] = [now, now + lease_ttl, self.max_inflight, self.max_queue_depth, rid]
        argv += [int(lease_ttl * 1000), job.attempt, limits.concurrency if limits else 0]
        argv += [int(self.fair_share), job.request_id, group, 1 / (limits.priority if limits else 1)]
        argv += [FAIR_TTL_MS, FAIR_WALK]
        for command in enqueue:
            argv += [len(command), *command]
        script_keys = [keys.inflight(), queue_key, keys.lease(job.request_id), keys.key_inflight(group)]
        script_keys.append(keys.fair(job.model))
        try:
            verdict, count, *rest = self._script(keys=script_keys, args=argv)
        except BaseException:
            self._give_back(quota)
            raise
        if verdict != 0:
            self._give_back(quota)
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
        if verdict == 3:
            assert limits is not None
            raise RateLimited(
                f"Too many concurrent requests for the key '{limits.name}' (limit {limits.concurrency}); "
                "retry when one of them has finished.",
                code="concurrency_limit_exceeded",
                headers={"Retry-After": "1", **(quota.headers() if quota else {})},
            )
        return Admitted(limits, quota, int(rest[0]) if rest else 0)

    def _give_back(self, quota: Quota | None) -> None:
        if quota is not None and self.limiter is not None:
            self.limiter.refund(quota)

    def release(self, pipe: Pipeline, flight: Flight) -> None:
        """Add to the release's round trip what admission holds besides the global entry (the key's entry,
        the job's fair-share tag and owner) and the key's usage if the job finished; correct the key's TPM
        charge to the tokens used (its own round trip, only for keys with a TPM limit)."""
        job = flight.job
        if job.key_name:
            pipe.zrem(keys.key_inflight(job.key_name), flight.rid)
        ids = {job.request_id, flight.rid}  # a retried request's first attempt left its tag under its own id
        pipe.hdel(keys.fair(job.model), *(f"{field}:{i}" for i in sorted(ids) for field in ("j", "o")))
        if flight.usage is not None and job.key_name and self.usage is not None:
            self.usage.record(pipe, job.key_name, flight.usage, request=job.choice == 0, prompt=job.prompt_counted)
        quota = flight.admitted.quota if flight.admitted is not None else None
        if quota is not None and quota.tokens and flight.usage is not None and self.limiter is not None:
            used = flight.usage.completion_tokens + (flight.usage.prompt_tokens if job.prompt_counted else 0)
            self.limiter.settle(quota, used)  # unfinished: the estimate stays charged

    def inflight(self) -> int:
        return int(self.redis.zcount(keys.inflight(), time.time(), "+inf"))

    def inflight_of(self, key_name: str) -> int:
        """Requests of one key in flight now (queued or running), across replicas."""
        return int(self.redis.zcount(keys.key_inflight(key_name), time.time(), "+inf"))
