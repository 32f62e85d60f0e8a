"""Worker slots: each is an RQ SimpleWorker on its own thread, sharing the process's loaded engine.

RQ's default worker forks per job, which would reload the model; SimpleWorker runs jobs in-process.
Signals belong to the main thread, and job timeouts use RQ's thread-safe TimerDeathPenalty.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from services.common import keys
from services.worker import job as job_entry
from services.worker.runner import JobRunner

log = logging.getLogger(__name__)


class SlotWorker(SimpleWorker):
    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        """The main thread owns SIGINT/SIGTERM and asks each slot to stop."""


class Slots:
    """N slot threads for one model; `busy` counts slots generating right now."""

    def __init__(self, client: redis.Redis, model_id: str, runner: JobRunner, *, count: int, worker_id: str) -> None:
        self.model_id = model_id
        self.runner = runner
        self._busy = 0
        self._lock = threading.Lock()
        self._client = client
        self._worker_id = worker_id
        self._stopping = threading.Event()
        self.workers: dict[int, SlotWorker] = {}
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"slot-{model_id}-{i}", daemon=True)
            for i in range(count)
        ]

    @property
    def busy(self) -> int:
        return self._busy

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _new_worker(self, index: int) -> SlotWorker:
        queue = Queue(keys.queue_name(self.model_id), connection=self._client, serializer=JSONSerializer)
        name = f"{self._worker_id}.{self.model_id}.{index}.{time.monotonic_ns() % 10**9}"
        return SlotWorker([queue], connection=self._client, serializer=JSONSerializer, name=name, worker_ttl=35)

    def _work(self, index: int) -> None:
        """Keep the slot alive: RQ's loop quits on some Redis errors (a Redis restart), so start anew."""
        job_entry.bind(_CountingRunner(self))
        level = logging.getLevelName(logging.getLogger().level)
        while not self._stopping.is_set():
            try:
                worker = self.workers[index] = self._new_worker(index)
                worker.work(logging_level=level)
            except redis.RedisError as exc:
                log.warning("slot %s-%d lost Redis (%s); retrying", self.model_id, index, exc)
            if not self._stopping.is_set():
                self._stopping.wait(1.0)

    def stop(self, drain_timeout: float) -> None:
        """Stop taking jobs; wait up to `drain_timeout` for jobs in flight, then let RQ mark us dead."""
        self._stopping.set()
        for worker in list(self.workers.values()):
            worker._stop_requested = True
        deadline = time.monotonic() + drain_timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.1)
        for worker in list(self.workers.values()):
            try:
                worker.register_death()
            except redis.RedisError as exc:
                log.warning("could not deregister slot %s: %s", worker.name, exc)


class _CountingRunner:
    """Wraps the runner to keep the busy count the heartbeat reports."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots

    def run(self, job) -> None:
        with self.slots._lock:
            self.slots._busy += 1
        try:
            self.slots.runner.run(job)
        finally:
            with self.slots._lock:
                self.slots._busy -= 1
