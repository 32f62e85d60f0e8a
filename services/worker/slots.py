"""Worker slots: each is an RQ SimpleWorker on its own thread, sharing the process's loaded engine.

RQ's default worker forks per job, which would reload the model; SimpleWorker runs jobs in-process.
Signals belong to the main thread; a job's time limit is its lease and deadline, not a timer thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import BaseDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from services.common import keys
from services.common.jobs import JOB_FUNCTION
from services.worker import job as job_entry
from services.worker.runner import JobRunner

log = logging.getLogger(__name__)
DEQUEUE_TIMEOUT = 5
"""Seconds a slot blocks waiting for a job (RQ derives it as worker_ttl - 15); bounds shutdown time."""
HEARTBEAT_EVERY_S = DEQUEUE_TIMEOUT / 2
"""The most often a slot's beat goes alone: well inside its worker_ttl (DEQUEUE_TIMEOUT + 15 s)."""
SUSPENSION_CHECK_S = 1.0
"""The most often a busy slot reads `rq suspend`'s flag (RQ reads it before every dequeue, a round trip a
job): a suspension reaches a slot between jobs within this long."""


class LeaseBound(BaseDeathPenalty):
    """No timer thread per job (RQ's TimerDeathPenalty starts one, and could not interrupt a C call anyway):
    a job ends when its lease goes or its deadline passes, which the publisher checks between tokens."""

    def setup_death_penalty(self) -> None:
        """Nothing to arm."""

    def cancel_death_penalty(self) -> None:
        """Nothing to disarm."""


class SlotWorker(SimpleWorker):
    """RQ's SimpleWorker with its bookkeeping folded into few round trips.

    Per job, RQ 2.x sends about 24 round trips besides the dequeue: two MULTIs and a PERSIST to start it, a
    heartbeat, WATCH, SMEMBERS and nine reads of the job's status and executions to finish it, then beats
    and state writes around each dequeue. On a small host every round trip is a wake-up of the slot and of
    Redis (~0.5 ms of CPU each), taken from the engine. Here a job costs the fetch, its start written with
    its `started` event and one MULTI to finish it, with the same keys written as RQ writes them (status,
    worker, registries), so `rq info` and the API's lost-job checks read what they always did.
    """

    death_penalty_class = LeaseBound

    def __init__(self, *args, released: Callable[[], bool] = lambda: False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.released = released
        """Whether the model's engine is gone (Slots.release): a job dequeued now goes back to its queue."""
        self._beat_at = -HEARTBEAT_EVERY_S
        self._unsuspended_at = -SUSPENSION_CHECK_S

    def _install_signal_handlers(self) -> None:
        """The main thread owns SIGINT/SIGTERM and asks each slot to stop."""

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        """A beat rides on a pipeline when there is one; alone, it is sent at most every HEARTBEAT_EVERY_S
        (RQ beats before and after every dequeue and after every job), its HSET and EXPIRE in one round trip."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            self._beat_at = time.monotonic()
            return
        if time.monotonic() - self._beat_at < HEARTBEAT_EVERY_S:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()
        self._beat_at = time.monotonic()

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check (waits while `rq suspend` holds), skipped when it found none less than
        SUSPENSION_CHECK_S ago."""
        if time.monotonic() - self._unsuspended_at < SUSPENSION_CHECK_S:
            return
        super().check_for_suspension(burst)
        self._unsuspended_at = time.monotonic()

    def set_state(self, state: str, pipeline=None) -> None:
        """RQ writes IDLE before every dequeue; a slot already idle (the finishing MULTI wrote it) skips it."""
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline=pipeline)

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        """SimpleWorker's execute_job and perform_job in two MULTIs: what RQ writes to start a job, in the
        round trip of the job's own `started` (our job function takes it as `prelude`; another RQ job gets
        a MULTI of its own), then the job, then what handle_job_success and cleanup write for a job
        without a kept result (result_ttl=0) or dependents, as ours are."""
        if self.released():
            self.hand_back(job, queue)
            return
        start = _Start(self, job, queue)
        job.started_at = now()
        try:
            if job.func_name == JOB_FUNCTION:
                job.func(*job.args, prelude=start, **job.kwargs)
            else:
                start.write()
                job.func(*job.args, **job.kwargs)
        except Exception:  # our job function ends every request itself; this is a bug's path: RQ's own
            start.write()
            job.ended_at = now()
            job._status = JobStatus.FAILED
            exc_info = sys.exc_info()
            self.handle_exception(job, *exc_info)
            self.handle_job_failure(
                job, queue, queue.started_job_registry, "".join(traceback.format_exception(*exc_info))
            )
            self.set_state(WorkerStatus.IDLE)
            return
        job.ended_at = now()
        with self.connection.pipeline() as pipe:
            start(pipe)  # a job skipped before its `started` (past its deadline) still leaves RQ's lists
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            self.cleanup_execution(job, pipeline=pipe)
            pipe.delete(job.key, job.dependents_key, job.dependencies_key, job.execution_registry.key)
            self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            self.heartbeat(pipeline=pipe)  # back to the idle TTL
            pipe.execute()

    def hand_back(self, job: RQJob, queue: Queue) -> None:
        """Put a job this slot dequeued after its model was unloaded back at the head of its queue, as it was
        (nothing of its start was written): the worker that loads the model next takes it, at once."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.lpush(queue.key, job.id)
            pipe.execute()
        log.info("job %s handed back to its queue: %s was unloaded", job.id, queue.name)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """RQ's loop only looks at the stop flag between jobs; an idle slot re-checks it every timeout."""
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=timeout)
            if result is not None:
                return result
        return None


class _Start:
    """What RQ's prepare_execution, prepare_job_execution and Job.perform write when a job starts, added to
    one pipeline once: the job's `started` round trip, or its finish when it never got that far."""

    def __init__(self, worker: SlotWorker, job: RQJob, queue: Queue) -> None:
        self.worker, self.job, self.queue = worker, job, queue
        self.added = False

    def __call__(self, pipe) -> None:
        if self.added:
            return
        self.added = True
        worker, job = self.worker, self.job
        ttl = worker.get_heartbeat_ttl(job)
        worker.execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
        worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        worker.set_current_job_id(job.id, pipeline=pipe)
        worker.set_current_job_working_time(0, pipeline=pipe)
        worker.heartbeat(ttl, pipeline=pipe)
        job.heartbeat(now(), ttl, pipeline=pipe)
        job.prepare_for_execution(worker.name, pipeline=pipe)
        pipe.lrem(self.queue.intermediate_queue_key, 1, job.id)
        pipe.persist(job.key)

    def write(self) -> None:
        """In a MULTI of its own, unless already added to one."""
        if not self.added:
            with self.worker.connection.pipeline() as pipe:
                self(pipe)
                pipe.execute()


class Slots:
    """N slot threads for one model; `busy` counts slots generating right now."""

    def __init__(self, client: redis.Redis, model_id: str, runner: JobRunner, *, count: int, worker_id: str) -> None:
        self.model_id = model_id
        self.runner = runner
        self._busy = 0
        self.last_used = time.monotonic()
        """When a job of this model last started or ended: its keep_alive counts from here."""
        self.keep_alive: float | None = None
        """The last request's own keep_alive (seconds, negative: forever), which wins over the model's."""
        self._lock = threading.Lock()
        self._client = client
        self._worker_id = worker_id
        self._stopping = threading.Event()
        self._released = False
        """Its engine is being unloaded: a job a closing slot still dequeues is handed back, not run."""
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
        return SlotWorker(
            [queue],
            connection=self._client,
            serializer=JSONSerializer,
            name=name,
            worker_ttl=DEQUEUE_TIMEOUT + 15,
            released=lambda: self._released,
        )

    def _work(self, index: int) -> None:
        """Keep the slot alive: RQ's loop quits on some Redis errors (a Redis restart), so start anew."""
        job_entry.bind(_CountingRunner(self))
        # RQ logs several INFO lines per job (its description and result): warnings and up only
        level = logging.getLevelName(max(logging.WARNING, logging.getLogger().level))
        while not self._stopping.is_set():
            try:
                worker = self.workers[index] = self._new_worker(index)
                worker.work(logging_level=level)
            except redis.RedisError as exc:
                log.warning("slot %s-%d lost Redis (%s); retrying", self.model_id, index, exc)
            if not self._stopping.is_set():
                self._stopping.wait(1.0)

    def stop(self, drain_timeout: float) -> None:
        self.close()
        self.wait(drain_timeout)

    def close(self) -> None:
        """Stop taking jobs; a job a slot dequeues meanwhile still runs."""
        self._stopping.set()
        for worker in list(self.workers.values()):
            worker._stop_requested = True

    def release(self, drain_timeout: float) -> None:
        """Stop taking jobs and let the ones in flight finish, then give the engine up at once: an idle slot
        blocked in its dequeue (up to DEQUEUE_TIMEOUT) ends in the background, and a job it takes meanwhile goes
        back to the head of its queue untouched (SlotWorker.hand_back), so a model swap does not wait seconds
        for idle slots. (A job that slips between that check and the release fails before it starts, and the
        API's lost-job check enqueues it again.)"""
        self.close()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    self._released = True
                    return
            time.sleep(0.05)
        with self._lock:
            self._released = True
        log.warning("slots of %s released with jobs still running after %.0f s", self.model_id, drain_timeout)

    def wait(self, drain_timeout: float) -> None:
        """Let the jobs in flight finish and every RQ loop end by itself.

        Exiting while a slot blocks in BLMOVE could strand a just-dequeued job in RQ's intermediate
        queue, where it would be failed without a word to its client; so we wait for the loops.
        """
        deadline = time.monotonic() + drain_timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + DEQUEUE_TIMEOUT + 2  # idle loops end after their current BLMOVE
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            log.warning("slot threads still running after the drain (a job, or Redis gone): %s", ", ".join(stuck))


class SlotReleased(RuntimeError):
    """A job taken by a slot whose model was just unloaded: failed before it started, so it is enqueued again."""


class _CountingRunner:
    """Wraps the runner to keep the busy count the heartbeat reports."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots

    def run(self, job, prelude=None) -> None:
        with self.slots._lock:
            if self.slots._released:
                raise SlotReleased(f"{self.slots.model_id} was unloaded as this slot took job {job.request_id}")
            self.slots._busy += 1
            self.slots.last_used = time.monotonic()
        try:
            self.slots.runner.run(job, prelude=prelude)
        finally:
            with self.slots._lock:
                self.slots._busy -= 1
                self.slots.last_used = time.monotonic()
                if job.keep_alive is not None:
                    self.slots.keep_alive = job.keep_alive
