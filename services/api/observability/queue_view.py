"""Who waits in a model's queue, per API key, for /v1/system/status.

Read from RQ's own records in one round trip: the queue list (head first) and each waiting job's data,
whose payload (common/jobs.py) names the caller's key. An admin route pays it, never a completion, and it
reads at most WALK jobs from the head: those beyond are counted under UNREAD.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import redis
from rq import Queue
from rq.job import Job as RQJob

from services.common import keys
from services.common.jobs import Job

ANONYMOUS = "(no key)"
"""The name a waiting job without a key is counted under (a stack without API keys)."""
UNREAD = "(not read)"
WALK = 1000


@dataclass(frozen=True)
class Waiting:
    """A model's queue as the status route shows it."""

    queued: int
    by_key: dict[str, int]
    oldest_wait_s: float | None


def decode_job(raw: bytes | None) -> Job | None:
    """The payload inside RQ's compressed job data ([func, instance, args, kwargs] in JSON); None if unreadable."""
    if raw is None:
        return None
    try:
        _func, _instance, args, _kwargs = json.loads(zlib.decompress(raw))
        return Job.from_wire(args[0])
    except (zlib.error, ValueError, TypeError, IndexError, KeyError):
        return None  # a job enqueued by something else (rq CLI, another version) is counted, not named


def waiting(client: redis.Redis, model_id: str, *, now: float | None = None) -> Waiting:
    pipe = client.pipeline(transaction=False)
    pipe.llen(_queue_key(model_id))
    pipe.lrange(_queue_key(model_id), 0, WALK - 1)
    length, ids = pipe.execute()
    for job_id in ids:
        pipe.hget(RQJob.key_for(job_id.decode() if isinstance(job_id, bytes) else job_id), "data")
    jobs = [decode_job(raw) for raw in pipe.execute()] if ids else []
    by_key = Counter((j.key_name if j is not None and j.key_name else ANONYMOUS) for j in jobs)
    if length > len(ids):
        by_key[UNREAD] = length - len(ids)
    accepted = [j.accepted_at for j in jobs if j is not None]
    now = time.time() if now is None else now
    oldest = round(max(0.0, now - min(accepted)), 3) if accepted else None
    return Waiting(int(length), dict(sorted(by_key.items())), oldest)


def _queue_key(model_id: str) -> str:
    """RQ's list for a queue name, as RQ spells it."""
    return Queue.redis_queue_namespace_prefix + keys.queue_name(model_id)
