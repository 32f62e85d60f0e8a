"""The worker registry: workers heartbeat what they serve to Redis with a TTL; the API reads it.

A worker that dies simply stops beating: its record expires and its models drop out of /v1/models.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import redis
from pydantic import BaseModel, ConfigDict

from services.common import keys


class LoadedModel(BaseModel):
    model_config = ConfigDict(frozen=True)
    context: int
    """Tokens of context each request of it gets."""
    bytes: int
    keep_alive: float
    """Seconds it stays loaded once idle; -1: until unloaded."""
    idle_s: float
    """Seconds since its last request started or ended; 0 while one runs."""
    loaded_s: float = 0.0
    """Seconds its load took."""


class WorkerRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    host: str
    pid: int
    engine: str
    device: str
    models: tuple[str, ...]
    slots: int
    busy: int
    started_at: float
    metrics_port: int = 0
    draining: bool = False
    """Finishing its jobs before it stops: alive, but no new work is routed to it."""
    state: str = "serving"
    """serving, draining, starting/restarting (its engine process is down: `models` is empty meanwhile),
    or crash_loop (the engine or the worker itself died `loop_after` times within a minute)."""
    restarts: int = 0
    last_exit: str = ""
    """How the engine process (or this worker's previous incarnation) last died, e.g. 'killed by SIGSEGV'."""
    engine_pid: int | None = None
    """PID of the llama-server this worker supervises, if it runs one."""
    can_serve: tuple[str, ...] = ()
    """Catalog ids its engine can load (services/worker/servable.py): a sidecar's one model, an in-process
    engine's models whose weights are here. /v1/models/load sends a model only to a worker that lists it."""

    on_demand: bool = False
    """It loads any model in can_serve when requests for it wait and no worker serves it (--on-demand): the
    API then queues such a request for MODEL_LOAD_WAIT_S instead of answering 503 at once."""
    memory_budget: int = 0
    """Bytes its models may take (MEMORY_BUDGET); 0: not measured (a sidecar at a URL)."""
    memory_used: int = 0
    """Bytes its loaded models take, as estimated before each load (services/worker/budget.py)."""
    loaded: dict[str, LoadedModel] = {}
    """Per loaded model: its context, memory, keep_alive and how long it has been idle."""

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.busy)


def default_worker_id(host: str, pid: int) -> str:
    """hostname-pid: unique per process, and derivable by whoever supervises the worker.

    A container's first process is pid 1 again after every restart, under the same hostname: there the id
    also carries when the process started (clock ticks since boot, /proc/1/stat), or a restarted worker passes
    for its dead self and the requests the dead one held wait for their deadline instead of failing at once."""
    if pid != 1:
        return f"{host}-{pid}"
    try:
        started = Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = secrets.token_hex(4)
    return f"{host}-1-{started}"


class Registry:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    def beat(self, record: WorkerRecord) -> None:
        expiry = time.time() + self.ttl
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.worker(record.id), record.model_dump_json(), ex=self.ttl)
        pipe.zadd(keys.workers_index(), {record.id: expiry})
        pipe.execute()

    def remove(self, worker_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.workers_index(), worker_id)
        pipe.execute()

    def live(self) -> list[WorkerRecord]:
        """Workers whose heartbeat has not expired; stale index entries are pruned in the same round trip."""
        index = keys.workers_index()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(index, "-inf", time.time())
        pipe.zrange(index, 0, -1)
        ids = [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()[1]]
        if not ids:
            return []
        raw = self.redis.mget([keys.worker(i) for i in ids])
        return [WorkerRecord.model_validate(json.loads(r)) for r in raw if r]

    def serving(self) -> dict[str, list[WorkerRecord]]:
        """model id -> live workers taking new requests for it (draining ones excluded)."""
        return by_model(self.live(), lambda rec: rec.models)


def by_model(
    records: list[WorkerRecord], models: Callable[[WorkerRecord], Iterable[str]]
) -> dict[str, list[WorkerRecord]]:
    """model id -> the records not draining that `models` names it for (what they serve, or could load)."""
    out: dict[str, list[WorkerRecord]] = {}
    for rec in records:
        if rec.draining:
            continue
        for model in models(rec):
            out.setdefault(model, []).append(rec)
    return out
